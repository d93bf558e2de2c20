-- common.lua: helpers prepended to every Hopper script (see `workers/src/broker/redis.rs`).
-- Not a script on its own: it only defines locals the scripts use.
--
-- KEYS[1] of every script is the queue's key prefix "{<prefix>:<queue>}:". Every key a script
-- touches is KEYS[1] .. suffix, so all of them share one hash tag and one Cluster slot:
--   job:<id>   hash, one per job: the fields of `Job` but `id` and `queue` (the key says
--              them), plus `seq` and `evs` (the ids of the stream entries holding its events
--              after the first, oldest first, space-separated: a job's history reads just
--              those; a job stored before `evs` existed has `evn`, its last entry's id). The fields
--              never changed after enqueue are packed into one field `d`:
--                <ev0>|<priority>|<max_retries>|<timeout_ms or ''>|<created_at>|<payload JSON>
--              (ev0 is the id of its first stream entry; only the payload, last, may hold a
--              '|'; `d` is never rewritten); `kind`,
--              `unique_key` and a chain step's `chain_id`, `chain_index` and, unless it is the
--              last, `chain_next` are fields of their own (scripts and listing read them
--              alone). A chain step that got its predecessor's result keeps it, as the
--              JSON text finish.lua received, in `input`: the client sets it as the
--              payload's top-level `input` when it reads the job. An optional field is
--              absent or '' when it has no value,
--              and a missing counter (attempt, lease_token, interruptions,
--              interruption_streak, progress) is 0 (progress is 100 once succeeded): a fresh
--              job stores only what it must. `lease_until` means something only while the
--              job is `running`: finish.lua leaves the last deadline behind.
--              A `waiting` chain step is in none of the zsets below but `all`: only its
--              predecessor's success moves it.
--   all        zset, every job id at score 0 (lexicographic index, newest first by id)
--   queued     zset, score = priority, member = qmember(run_at, seq, id): jobs that became
--              queued after their enqueue (promoted, released, rescued, retried, a chain's
--              next step) or whose enqueue could not keep a lane in order
--   lane:<p>   list of qmember(run_at, seq, id) of jobs enqueued `queued` at priority p, in
--              the order they were enqueued, which is queue order (same run_at = the call's
--              now, increasing seq); a push and a pop instead of a zset insert and a zset pop.
--              An entry whose job is no longer `queued` under that seq (cancelled) is left
--              for fetch to skip: a cancel does not scan the list.
--   lanes      zset of the priorities p that may have a non-empty lane:<p> (score = member = p)
--   due        zset of scheduled and retrying ids, score = due time (ms)
--   running    zset of running ids, score = lease deadline (ms), and RUNNING_PIN at +inf
--              (see below), so that only `ZCOUNT running -inf (+inf` counts the running jobs
--   succeeded, dead, cancelled   zsets of finished ids, score = finished_at (ms)
--   counts     hash state -> number of jobs
--   events     stream of events (see "Events" below), trimmed to about ARGV cap entries
--   signal     list of wake-up tokens, BLPOPed by idle workers
--   paused     string, present while an operator has paused the queue (fetch leases nothing)
--   rate       string, a float of ms: when the queue's job rate next allows a start; written
--              only by a rated fetch (see fetch.lua), absent for a queue without a rate
--   unique     hash unique_key -> id
--   seq        counter, enqueue order
--   stat:ok:<second>, stat:fail:<second>   per-second counters, expire after 120 s

local K = KEYS[1]

-- The globals the scripts use, as locals: in Lua 5.1 every use of a global is a look-up in
-- the globals table, a local is a register (and an upvalue in the helpers below). The hot
-- scripts read ARGV and call redis.call, string.* and tonumber a few dozen times per job.
local ARGV, redis, string, tonumber, tostring, unpack = ARGV, redis, string, tonumber, tostring, unpack
local ipairs, pairs, math = ipairs, pairs, math

-- Time. Every lease, due time and rescue decision is made on one clock, Redis' own (`TIME`),
-- so that nodes whose clocks disagree still agree on whether a lease is live: a node 20 s
-- fast must not take a job whose 30 s lease has 15 s left. A script's ARGV `now` is '' for
-- that; a number there is a test's manual clock (the broker's `with_clock_time`), used as is.
-- Redis 7 replicates scripts by their effects, so calling `TIME` before writing is allowed.
local function clock_ms(arg)
  if arg and arg ~= '' then
    return tonumber(arg)
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The decimal text of integer milliseconds (tostring would switch to an exponent). '%d', not
-- '%.0f': an integer conversion, not libc's float printing (which showed in Redis' profile).
local function ms_text(n)
  return string.format('%d', n)
end

-- The priority (text) in a job's packed field `d` (see the layout above).
local function d_priority(d)
  return string.match(d, '^[^|]*|(%d+)|')
end

local function job_key(id)
  return K .. 'job:' .. id
end

-- A member of the `running` zset that is no job: fetch.lua adds it (at +inf, where no lease
-- deadline ever is) with every lease, and it is longer than Redis' zset-max-listpack-value
-- (64 bytes by default). A zset holding a member that long is a skiplist, not a listpack: a
-- listpack of a few dozen running jobs is scanned end to end by every ZADD and ZREM, which
-- cost three times as much per job (callgrind: 20k instructions a job for the lease's ZADD
-- and ZREM against 6k). It keeps the key in place once a queue has leased a job; nothing
-- reads it (rescue looks only at scores below now).
local RUNNING_PIN = '~ not a job: keeps this zset a skiplist (see common.lua, RUNNING_PIN) ~~~~~~~~'

-- Member of the `queued` zset. The score is the priority alone; members with one score sort
-- by bytes, so a fixed-width due time, then a fixed-width enqueue sequence, then the id give
-- "earliest due, then first enqueued" inside a level, with no limit from double precision.
local QPREFIX = 31
local function qmember(run_at, seq, id)
  if run_at < 0 then
    run_at = 0
  end
  return string.format('%015d%016d', run_at, seq) .. id
end

-- Whether queue entry `a` (priority pa, member ma) comes before `b` (pb, mb): priority, then
-- the fixed-width due time and sequence, compared as numbers (Lua compares strings with
-- strcoll, whose order depends on Redis' locale).
local function qbefore(pa, ma, pb, mb)
  if pa ~= pb then
    return pa < pb
  end
  local ra, rb = tonumber(string.sub(ma, 1, 15)), tonumber(string.sub(mb, 1, 15))
  if ra ~= rb then
    return ra < rb
  end
  return tonumber(string.sub(ma, 16, QPREFIX)) < tonumber(string.sub(mb, 16, QPREFIX))
end

-- Removes and returns, in queue order, the first `need` entries (members) of the queued zset
-- and the lanes together.
local function take_queued(need)
  local zs = redis.call('ZRANGE', K .. 'queued', 0, need - 1, 'WITHSCORES')
  local lanes = {}
  for _, lv in ipairs(redis.call('ZRANGE', K .. 'lanes', 0, -1)) do
    local items = redis.call('LRANGE', K .. 'lane:' .. lv, 0, need - 1)
    if #items == 0 then
      redis.call('ZREM', K .. 'lanes', lv)
    else
      lanes[#lanes + 1] = { lv = lv, p = tonumber(lv), items = items, i = 1 }
    end
  end
  local taken, zi = {}, 1
  while #taken < need do
    local bp, bm, bl
    if zi <= #zs then
      bp, bm = tonumber(zs[zi + 1]), zs[zi]
    end
    for _, l in ipairs(lanes) do
      local m = l.items[l.i]
      if m and (not bm or qbefore(l.p, m, bp, bm)) then
        bp, bm, bl = l.p, m, l
      end
    end
    if not bm then
      break
    end
    taken[#taken + 1] = bm
    if bl then
      bl.i = bl.i + 1
    else
      zi = zi + 2
    end
  end
  if zi > 1 then
    redis.call('ZPOPMIN', K .. 'queued', (zi - 1) / 2)
  end
  for _, l in ipairs(lanes) do
    if l.i > 1 then
      local key = K .. 'lane:' .. l.lv
      -- LTRIM, not LPOP with a count: the entries are in hand already, and LPOP would send
      -- each back, into a Lua string again.
      redis.call('LTRIM', key, l.i - 1, -1)
      if l.i > #l.items and redis.call('LLEN', key) == 0 then
        redis.call('ZREM', K .. 'lanes', l.lv)
      end
    end
  end
  return taken
end

-- Queues freshly enqueued entries of priority `p` (text), given in queue order: appended to
-- the lane, or into the zset when the lane's last entry comes after the first of them (a
-- clock set back), so that a lane stays in order.
local function enqueue_lane(p, members)
  local key = K .. 'lane:' .. p
  local last = redis.call('LINDEX', key, -1)
  local pn = tonumber(p)
  if last and qbefore(pn, members[1], pn, last) then
    local z = {}
    for i = 1, #members do
      z[#z + 1] = p
      z[#z + 1] = members[i]
    end
    redis.call('ZADD', K .. 'queued', unpack(z))
    return
  end
  redis.call('RPUSH', key, unpack(members))
  redis.call('ZADD', K .. 'lanes', p, p)
end

-- The decimal text of an integer, memoized per call: a number passed to redis.call is
-- converted with a sprintf each time, which the hot scripts' per-job arguments avoid.
local itoa_memo = {}
local function itoa(n)
  local s = itoa_memo[n]
  if not s then
    s = tostring(n)
    itoa_memo[n] = s
  end
  return s
end

-- State counts, summed per script and written with one HINCRBY per state at the end.
local counts = {}
local function move(from, to, n)
  n = n or 1
  if from then
    counts[from] = (counts[from] or 0) - n
  end
  if to then
    counts[to] = (counts[to] or 0) + n
  end
end
local function flush_counts()
  for st, d in pairs(counts) do
    if d ~= 0 then
      redis.call('HINCRBY', K .. 'counts', st, d)
    end
  end
end

-- Events. A stream entry is `at <ms>` followed by one or more events, each starting with
-- `t <type>`, then `j <id>`, `k <kind>`, `a <attempt>` and optional `p` (progress), `m`
-- (message), `r` (result JSON), `e` (error). The hot scripts (enqueue, fetch, finish) write
-- one entry per call holding all of its events: one XADD instead of one per job; and there an
-- event starts with one field `v "<type> <attempt> <id> <kind>"` instead of its four (kind
-- last: it is the one part that may hold a space), which made the stream's share of a job's
-- Redis work (callgrind, a simulated drain) about a third smaller. The stream is trimmed
-- approximately to `cap` entries.

-- A job's `evs` with the stream entry `ev` added (once: an entry may hold two of its events).
local function evs_add(evs, ev)
  if not evs or evs == '' then
    return ev
  end
  if evs == ev or string.sub(evs, -#ev - 1) == ' ' .. ev then
    return evs
  end
  return evs .. ' ' .. ev
end

-- Appends one entry with one event and returns its id.
local function event(cap, typ, id, kind, at, attempt, extra)
  local args = { K .. 'events', 'MAXLEN', '~', cap, '*', 'at', at, 't', typ, 'j', id, 'k', kind, 'a', attempt }
  if extra then
    for i = 1, #extra do
      args[#args + 1] = extra[i]
    end
  end
  return redis.call('XADD', unpack(args))
end

-- The events of a batch, written as one entry by flush_events. Lua's unpack takes at most
-- about 8,000 values: callers bound their batches (500 jobs of at most 4 values each).
local evbuf = {}
local function add_event(typ, id, kind, attempt, xk, xv)
  local n = #evbuf
  evbuf[n + 1] = 'v'
  evbuf[n + 2] = typ .. ' ' .. attempt .. ' ' .. id .. ' ' .. kind
  if xk then
    evbuf[n + 3] = xk
    evbuf[n + 4] = xv
  end
end

-- Appends the buffered events as one entry; returns its id, or nil when there were none.
local function flush_events(cap, at)
  if #evbuf == 0 then
    return nil
  end
  local id = redis.call('XADD', K .. 'events', 'MAXLEN', '~', cap, '*', 'at', ms_text(at), unpack(evbuf))
  evbuf = {}
  return id
end

-- Wakes up to `n` (at most 8) workers blocked on this queue. The list is trimmed so that it
-- stays a handful of tokens when nobody is waiting; a leftover token only causes one spurious
-- (harmless) wake-up, and a fetch that leaves nothing queued or scheduled drops them all
-- (fetch.lua).
local function signal(n)
  if n <= 0 then
    return
  end
  if n > 8 then
    n = 8
  end
  local toks = {}
  for i = 1, n do
    toks[i] = '1'
  end
  redis.call('LPUSH', K .. 'signal', unpack(toks))
  redis.call('LTRIM', K .. 'signal', 0, 15)
end

-- Counts succeeded / failed attempts in per-second buckets for "last minute" numbers.
local function stat(name, now, n)
  if n > 0 then
    local key = K .. 'stat:' .. name .. ':' .. math.floor(now / 1000)
    redis.call('INCRBY', key, n)
    redis.call('EXPIRE', key, 120)
  end
end

-- Chains. Every step of a chain is on the same queue (`link_chain` puts them there), so a
-- chain is walked through `chain_next` links inside this queue's slot. A walk stops at a
-- step it has seen already, so hand-made links that loop cannot hang Redis.

-- After chain step `index` succeeded with the JSON text `result`: its successor `next_id`, if
-- still `waiting`, becomes `queued` now with `input` = result (job.enqueued, "chain: step N
-- succeeded"). Returns 1 when a step was queued (the caller signals a worker), else 0.
-- The result is stored as the text it came as, in the step's field `input`: no script ever
-- decodes or re-encodes JSON (cjson turns [] into {} and rounds numbers to 14 digits).
local function chain_promote(next_id, index, result, now, cap)
  local jk = job_key(next_id)
  local f = redis.call('HMGET', jk, 'state', 'kind', 'attempt', 'seq', 'd', 'evs')
  if f[1] ~= 'waiting' then
    return 0
  end
  local ev = event(cap, 'job.enqueued', next_id, f[2], now, f[3] or 0, { 'm', 'chain: step ' .. index .. ' succeeded' })
  redis.call('HSET', jk, 'state', 'queued', 'run_at', now, 'input', result, 'evs', evs_add(f[6], ev))
  redis.call('ZADD', K .. 'queued', d_priority(f[5]), qmember(now, tonumber(f[4]), next_id))
  move('waiting', 'queued')
  return 1
end

-- After chain step `index` (`id`) ended `how` ('dead' or 'cancelled'): every later step of
-- the chain that is `waiting` is cancelled, with the reason as its last error and in its
-- job.cancelled event. `next_id` is the step's `chain_next` (nil or '' for the last step).
local function chain_cancel_rest(id, index, next_id, how, now, cap)
  local reason = 'chain: step ' .. index .. ' (' .. id .. ') is ' .. how
  local cur, seen = next_id, {}
  while cur and cur ~= '' and not seen[cur] do
    seen[cur] = true
    local jk = job_key(cur)
    local f = redis.call('HMGET', jk, 'state', 'kind', 'attempt', 'chain_next', 'evs')
    if f[1] == 'waiting' then
      local ev = event(cap, 'job.cancelled', cur, f[2], now, f[3] or 0, { 'm', reason })
      redis.call('HSET', jk, 'state', 'cancelled', 'finished_at', now, 'last_error', reason,
        'evs', evs_add(f[5], ev))
      redis.call('ZADD', K .. 'cancelled', now, cur)
      move('waiting', 'cancelled')
    end
    cur = f[4]
  end
end

-- After a chain step was retried: every later step that is `cancelled` goes back to
-- `waiting` (no event: it has not run, and its predecessor's success will queue it).
local function chain_resume_rest(next_id)
  local cur, seen = next_id, {}
  while cur and cur ~= '' and not seen[cur] do
    seen[cur] = true
    local jk = job_key(cur)
    local f = redis.call('HMGET', jk, 'state', 'chain_next')
    if f[1] == 'cancelled' then
      redis.call('ZREM', K .. 'cancelled', cur)
      redis.call('HSET', jk, 'state', 'waiting')
      redis.call('HDEL', jk, 'finished_at', 'last_error')
      move('cancelled', 'waiting')
    end
    cur = f[2]
  end
end

-- A finished (dead or cancelled) job back to `queued` with a fresh set of retries, behind
-- the jobs already queued at its priority; `job.enqueued` with message "retried". The last
-- error is kept. A chain step's cancelled successors go back to `waiting`. Used by retry.lua
-- and retry_all_dead.lua.
-- The step before step `index` (> 0) of the chain whose first step is `chain_id`, found by
-- walking `chain_next` links from the first step; nil when a link is missing.
local function chain_predecessor(chain_id, index)
  local cur, seen = chain_id, {}
  for _ = 1, index - 1 do
    if not cur or cur == '' or seen[cur] then
      return nil
    end
    seen[cur] = true
    cur = redis.call('HGET', job_key(cur), 'chain_next')
  end
  if not cur or cur == '' then
    return nil
  end
  return cur
end

local function requeue(id, st, now, cap)
  local jk = job_key(id)
  local f = redis.call('HMGET', jk, 'kind', 'd', 'chain_next', 'chain_id', 'chain_index', 'evs')
  local priority = d_priority(f[2])
  local seq = redis.call('INCR', K .. 'seq')
  redis.call('ZREM', K .. st, id)
  local ev = event(cap, 'job.enqueued', id, f[1], now, 0, { 'm', 'retried' })
  -- A later chain step runs with its predecessor's result: queued with it when the
  -- predecessor succeeded, else back to waiting for it.
  local target = 'queued'
  local index = tonumber(f[5] or '0') or 0
  if f[4] and f[4] ~= '' and index > 0 then
    local pred = chain_predecessor(f[4], index)
    local p = {}
    if pred then
      p = redis.call('HMGET', job_key(pred), 'state', 'result')
    end
    if p[1] == 'succeeded' and p[2] and p[2] ~= '' then
      redis.call('HSET', jk, 'input', p[2])
    else
      target = 'waiting'
    end
  end
  redis.call('HSET', jk, 'state', target, 'attempt', 0, 'run_at', now, 'seq', seq,
    'interruption_streak', 0, 'evs', evs_add(f[6], ev))
  redis.call('HDEL', jk, 'finished_at', 'lease_until', 'result', 'progress', 'progress_message')
  if target == 'queued' then
    redis.call('ZADD', K .. 'queued', priority, qmember(now, seq, id))
  end
  move(st, target)
  if f[3] and f[3] ~= '' then
    chain_resume_rest(f[3])
  end
end

-- ---------------------------------------------------------------------------------------
