-- common.lua: helpers shared by every Hopper script (see workers/src/broker/redis/scripts.rs).
-- Not a script on its own: it only defines locals the scripts use.
--
-- KEYS[1] of every script is the queue's key prefix "{<prefix>:<queue>}:"; on one Redis (not a
-- cluster) KEYS[2] is the event clock (see "Entry ids" below). Every other key a script
-- touches is KEYS[1] .. suffix, so all of them share one hash tag and one Cluster slot:
--   job:<id>   string, one per job: its record (storage layout 3 and 4; layout 1 was a hash,
--              layout 2 the record with `d` inside; migrate.lua rewrites both). The id and
--              queue are not stored (the key says them). Two parts joined by the byte 0xFF,
--              then the optional fields:
--                <h> 0xFF <kind> { 0xFE <name> 0xFF <value> }
--              `h`, the fields that change as the job moves, '|'-separated (see H_PAT):
--                state|attempt|lease_token|lease_until|started_at|run_at|seq|finished_at|
--                interruption_streak|evs
--              (counters as digits, an absent time '', `seq` in 16 digits, `evs` the
--              space-separated ids of the stream entries holding its events after the first,
--              oldest first: a job's history reads just those); then each optional field the
--              job has, as a name/value pair: `unique_key`, a chain step's `chain_id`,
--              `chain_index` and, unless it is the last, `chain_next`, `input` (a chain step's
--              predecessor's result, as the JSON text finish.lua received: the client sets it
--              as the payload's top-level `input`), `interruptions`, `checkpoint`, `progress`,
--              `progress_message`, `last_error`, `result`, and `evn` (a job stored before
--              `evs` existed: its last entry's id). Every value Hopper stores is UTF-8, which
--              never holds the bytes 0xFE and 0xFF, so the separators need no escaping and a
--              pair is found by searching for 0xFE <name> 0xFF. An absent optional field or
--              counter reads as none or 0, and so does an empty one (progress reads as 100
--              once succeeded: finish.lua leaves the last progress behind). `lease_until`
--              means something only while the job is `running`: finish.lua leaves the last
--              deadline behind.
--              One string instead of a hash: a step reads the job with one GET (or one MGET
--              for a batch) and writes it with one SET (MSET), where a hash (a listpack at
--              this size) paid a linear field search per field read and an insert per field
--              written (callgrind: see docs/research/redis-layout-v2/README.md).
--   jd:<id>    string, one per job: `d`, the fields never changed after enqueue:
--                <ev0>|<priority>|<max_retries>|<timeout_ms or ''>|<created_at>|<payload JSON>
--              (ev0 is the id of its first stream entry; only the payload, last, may hold a
--              '|'). A key of its own so that the steps that rewrite the record never copy
--              the payload: Redis' Lua hashes every byte of every string a script makes or
--              reads, so a payload inside the record cost its length three times over in
--              fetch and in finish (a 1 KB payload made layout 2 12% dearer than the hash).
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
--   done       list of succeeded ids in the order they finished, oldest first: an append
--              (RPUSH) where a zset insert cost 5.6k Redis instructions a job, a tenth of
--              finish.lua's (callgrind); purge.lua reads it from the head. The scripts run on
--              Redis' clock, so finish order is finished_at order (a test's manual clock set
--              back only delays the purge of the jobs behind a later one). Layout 1 kept a
--              zset `succeeded` instead: migrate.lua moves it here.
--   dead, cancelled   zsets of finished ids, score = finished_at (ms)
--   counts     hash state -> number of jobs
--   events     stream of events (see "Events" below), trimmed to about ARGV cap entries
--   signal     list of wake-up tokens, BLPOPed by idle workers
--   paused     string, present while an operator has paused the queue (fetch leases nothing)
--   rate       string, a float of ms: when the queue's job rate next allows a start; written
--              only by a rated fetch (see fetch.lua), absent for a queue without a rate
--   unique     hash unique_key -> id
--   seq        counter, enqueue order
--   stat:ok:<second>, stat:fail:<second>   per-second counters, expire after 120 s

-- This file runs in one of two ways (workers/src/broker/redis/scripts.rs): in front of each
-- script, run by EVALSHA, or once, as the head of a Redis Function library loaded with
-- FUNCTION LOAD, whose functions (one per script) then share the helpers below. The second
-- saves every call the building of these ~50 helpers, ~60k Redis instructions, a third of
-- what an idle fetch costs (callgrind, docs/research/redis-layout-v2/README.md). So nothing
-- here may depend on a call at load time: the call's key and arguments, the globals (Redis
-- 7.0 offers no `string` or `redis.call` while a library loads) and each call's scratch
-- tables are bound by `begin` as the call starts, and every script starts with it.

-- The globals, read when called (their names are shadowed by the locals below); and a
-- script's KEYS and ARGV (a function's are its arguments).
local function globals()
  return redis, string, tonumber, tostring, unpack, ipairs, pairs, math
end
local function call_args()
  return KEYS, ARGV
end

-- The call's queue prefix and arguments, and the globals the scripts use as locals: in Lua
-- 5.1 every use of a global is a look-up in the globals table, a local is a register (and an
-- upvalue in the helpers below). The hot scripts read ARGV and call redis.call, string.* and
-- tonumber a few dozen times per job.
local K, ARGV, CLOCK
local redis, string, tonumber, tostring, unpack, ipairs, pairs, math
-- Per call scratch (see their helpers): memos, the state counts and the events to write.
local itoa_memo, succ_memo, counts, evbuf

-- Binds the above for a call on `keys` with `argv`. Fresh tables each call: a function
-- library keeps its upvalues from call to call, and a call that failed half-way must not
-- leave its counts or events to the next.
local function begin(keys, argv)
  K, ARGV, CLOCK = keys[1], argv, keys[2]
  redis, string, tonumber, tostring, unpack, ipairs, pairs, math = globals()
  itoa_memo, succ_memo, counts, evbuf = {}, {}, {}, {}
end

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

-- The decimal text of an integer, memoized per call. Every number a script hands to
-- redis.call goes through here or is a string literal ('0', '-1'): Redis converts a Lua
-- number argument with snprintf('%.17g') (and tostring or `..` would use '%.14g'), glibc's
-- float printing, ~1.5k instructions each; fetch.lua passed ~15 a call, 23k of the ~270k a
-- call costs whatever its size (callgrind, docs/research/redis-layout-v2/README.md).
local function itoa(n)
  local s = itoa_memo[n]
  if not s then
    s = string.format('%d', n)
    itoa_memo[n] = s
  end
  return s
end

-- The priority (text) in a job's packed field `d` (see the layout above).
local function d_priority(d)
  return string.match(d, '^[^|]*|(%d+)|')
end

local function job_key(id)
  return K .. 'job:' .. id
end

-- A job's sequence as stored in its record: the 16 digits it has in a queue member, so that
-- fetch.lua checks an entry against the record by comparing two interned strings (a
-- pointer), not by parsing both into numbers.
local function seq_text(seq)
  return string.format('%016d', seq)
end

-- The key of a job's `d` (see the layout above).
local function d_key(id)
  return K .. 'jd:' .. id
end

-- A job's priority (text), from its `d`; '5' for a job without one (data Hopper did not write:
-- a script must not fail halfway on it).
local function priority_of(id)
  local d = redis.call('GET', d_key(id))
  return (d and d_priority(d)) or '5'
end

-- A job's record (see the layout above). The hot scripts (enqueue, fetch, finish) cut and
-- build it with string operations of their own; the others read it into a table with
-- rec_read and write it back with rec_write.
local H_PAT = '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$'
-- The record's two leading parts and the optional pairs after them, as one string.
local REC_PAT = '^([^\255]*)\255([^\254]*)(.*)$'
-- The optional fields, in the order a written record keeps them.
local OPTIONAL = {
  'unique_key', 'chain_id', 'chain_index', 'chain_next', 'input', 'interruptions', 'evn', 'checkpoint',
  'progress', 'progress_message', 'last_error', 'result',
}

-- A record read into a table: h's fields by name (state, attempt, token, lease_until,
-- started_at, run_at, seq, finished_at, streak, evs), `kind`, and `x`, the optional fields by
-- name. nil for nil (no such job) and for a record that does not parse.
local function rec_read(v)
  if not v then
    return nil
  end
  local h, kind, rest = string.match(v, REC_PAT)
  if not h then
    return nil
  end
  local st, attempt, token, lease_until, started_at, run_at, seq, finished_at, streak, evs = string.match(h, H_PAT)
  if not st then
    return nil
  end
  local x = {}
  for name, value in string.gmatch(rest, '\254([^\254\255]*)\255([^\254]*)') do
    x[name] = value
  end
  return {
    state = st, attempt = attempt, token = token, lease_until = lease_until, started_at = started_at,
    finished_at = finished_at, run_at = run_at, seq = seq, streak = streak, evs = evs, kind = kind, x = x,
  }
end

-- The text of a table as rec_read makes it; an optional field that is nil or '' is left out.
local function rec_text(j)
  local parts = {
    j.state, '|', j.attempt, '|', j.token, '|', j.lease_until, '|', j.started_at, '|', j.run_at, '|', j.seq, '|',
    j.finished_at, '|', j.streak, '|', j.evs, '\255', j.kind,
  }
  for _, name in ipairs(OPTIONAL) do
    local v = j.x[name]
    if v and v ~= '' then
      parts[#parts + 1] = '\254'
      parts[#parts + 1] = name
      parts[#parts + 1] = '\255'
      parts[#parts + 1] = v
    end
  end
  return table.concat(parts)
end

-- A new job's record (see the layout above): no attempt, lease or finish yet, no
-- interruption, no event after the first (whose entry leads `d`), no optional field.
local function rec_new(state, at_s, seq_s, kind)
  return state .. '|0|0|||' .. at_s .. '|' .. seq_s .. '||0|\255' .. kind
end

-- Rewrites the job `id`, stored as a hash (layout 1), as its record and `d` (see
-- migrate.lua); returns the record's text.
local function rec_from_hash(id)
  local jk = job_key(id)
  local f = redis.call('HGETALL', jk)
  local m = {}
  for k = 1, #f, 2 do
    m[f[k]] = f[k + 1]
  end
  local j = {
    state = m.state or '', attempt = m.attempt or '0', token = m.lease_token or '0',
    lease_until = m.lease_until or '', started_at = m.started_at or '', finished_at = m.finished_at or '',
    run_at = m.run_at or '', seq = seq_text(tonumber(m.seq) or 0), streak = m.interruption_streak or '0',
    evs = m.evs or '', kind = m.kind or '', x = {},
  }
  for _, name in ipairs(OPTIONAL) do
    j.x[name] = m[name]
  end
  local v = rec_text(j)
  redis.call('DEL', jk)
  redis.call('MSET', jk, v, d_key(id), m.d or '')
  return v
end

-- The text of the job record of `id`, false when there is none. A job still stored as a hash
-- (enqueued by a build of layout 1 after migrate.lua ran) is rewritten first: a GET on a hash
-- is an error, and a script that failed after taking entries off a queue would leave their
-- jobs queued in no lane.
local function rec_raw(id)
  local v = redis.pcall('GET', job_key(id))
  -- A record's text has no field `err` (a string's fields are string.*'s); an error has.
  if v and v.err then
    return rec_from_hash(id)
  end
  return v
end

-- The records of the jobs `ids` (their keys the first `n` of `keys`, all of them when `n` is
-- nil), read with one MGET: false for none. A job still stored as a hash (MGET answers none
-- for it) is rewritten first, as rec_raw does. Keys after the first `n` are read in the same
-- MGET and answered after the records as MGET answers them: a caller's other reads of the
-- batch, for one redis.call instead of two.
local function rec_many(ids, keys, n)
  local vs = redis.call('MGET', unpack(keys))
  -- What a missing value turned out to be, by id: one job met twice is rewritten once, and
  -- both answers are its record.
  local looked
  for i = 1, n or #vs do
    if not vs[i] then
      looked = looked or {}
      local id = ids[i]
      if looked[id] == nil then
        looked[id] = redis.call('TYPE', keys[i]).ok == 'hash' and rec_from_hash(id)
      end
      vs[i] = looked[id]
    end
  end
  return vs
end

local function rec_get(id)
  return rec_read(rec_raw(id))
end

local function rec_write(id, j)
  redis.call('SET', job_key(id), rec_text(j))
end

-- One optional field of a record's text, nil when absent.
local function rec_field(v, name)
  return string.match(v, '\254' .. name .. '\255([^\254]*)')
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

-- The decimal text of a counter's text plus one ('' counts as 0), memoized per call: the
-- attempt and lease token a fetch writes, without a tonumber (strtod) for every job.
local function succ(t)
  local s = succ_memo[t]
  if not s then
    s = string.format('%d', (tonumber(t) or 0) + 1)
    succ_memo[t] = s
  end
  return s
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
  local zs = redis.call('ZRANGE', K .. 'queued', '0', itoa(need - 1), 'WITHSCORES')
  local lanes = {}
  for _, lv in ipairs(redis.call('ZRANGE', K .. 'lanes', '0', '-1')) do
    local items = redis.call('LRANGE', K .. 'lane:' .. lv, '0', itoa(need - 1))
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
    redis.call('ZPOPMIN', K .. 'queued', itoa((zi - 1) / 2))
  end
  for _, l in ipairs(lanes) do
    if l.i > 1 then
      local key = K .. 'lane:' .. l.lv
      -- LTRIM, not LPOP with a count: the entries are in hand already, and LPOP would send
      -- each back, into a Lua string again.
      redis.call('LTRIM', key, itoa(l.i - 1), '-1')
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
  local last = redis.call('LINDEX', key, '-1')
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

-- Freshly enqueued lane entries, grouped by priority (text) in the order first met: made by
-- new_lanes, filled by lane_add in queue order, written by lanes_push through enqueue_lane.
local function new_lanes()
  return { levels = {}, by = {} }
end

local function lane_add(lanes, p, member)
  local lane = lanes.by[p]
  if not lane then
    lane = {}
    lanes.by[p] = lane
    lanes.levels[#lanes.levels + 1] = p
  end
  lane[#lane + 1] = member
end

local function lanes_push(lanes)
  for _, p in ipairs(lanes.levels) do
    enqueue_lane(p, lanes.by[p])
  end
end


-- State counts, summed per script and written with one HINCRBY per state at the end.
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
      redis.call('HINCRBY', K .. 'counts', st, itoa(d))
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

-- Entry ids. On one Redis (not a cluster) every script is called with a second key, the event
-- clock `<prefix>:evclock`: the last entry id given to any queue's stream, `<ms>-<seq>`. An
-- entry's id is the next one after it (Redis' time in ms, or the clock's ms and its seq + 1
-- when that is not behind: how `XADD *` numbers one stream, here across all of them), so the
-- ids of all the queues' streams increase in the order the scripts ran. A reader that takes
-- every stream in one `MULTI` then has every entry that sorts before the last it read, and
-- hands out the current millisecond at once instead of waiting for it to end (events.rs). A
-- stream already past the clock (written by a Hopper from before it, or after Redis' clock
-- went back) takes `*` instead, and the clock moves up to that id. On a cluster the streams'
-- slots differ and no script can touch one clock: there, `CLOCK` is nil and ids are `*`.
local function entry_id()
  local t = redis.call('TIME')
  local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local seq = 0
  local last = redis.call('GET', CLOCK)
  if last then
    local lms, lseq = string.match(last, '^(%d+)-(%d+)$')
    lms = tonumber(lms)
    if lms and lms >= ms then
      ms, seq = lms, tonumber(lseq) + 1
    end
  end
  return string.format('%d-%d', ms, seq)
end

-- Appends the entry `at <at>` then `fields` to the queue's stream, trimmed to about `cap`
-- entries; returns its id.
local function xadd(cap, at, fields)
  local key = K .. 'events'
  if not CLOCK then
    return redis.call('XADD', key, 'MAXLEN', '~', cap, '*', 'at', at, unpack(fields))
  end
  local res = redis.pcall('XADD', key, 'MAXLEN', '~', cap, entry_id(), 'at', at, unpack(fields))
  if type(res) == 'table' and res.err then
    res = redis.call('XADD', key, 'MAXLEN', '~', cap, '*', 'at', at, unpack(fields))
  end
  redis.call('SET', CLOCK, res)
  return res
end

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
  local args = { 't', typ, 'j', id, 'k', kind, 'a', attempt }
  if extra then
    for i = 1, #extra do
      args[#args + 1] = extra[i]
    end
  end
  return xadd(cap, at, args)
end

-- The events of a batch, written as one entry by flush_events. Lua's unpack takes at most
-- about 8,000 values: callers bound their batches (500 jobs of at most 4 values each).
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
  local id = xadd(cap, ms_text(at), evbuf)
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
  redis.call('LTRIM', K .. 'signal', '0', '15')
end

-- Counts succeeded / failed attempts in per-second buckets for "last minute" numbers. The
-- bucket's expiry is set by the call that made it (its INCRBY answered just this call's n),
-- not by every call: each redis.call costs ~8k instructions whatever it does.
local function stat(name, now, n)
  if n > 0 then
    local key = K .. 'stat:' .. name .. ':' .. itoa(math.floor(now / 1000))
    if redis.call('INCRBY', key, itoa(n)) == n then
      redis.call('EXPIRE', key, '120')
    end
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
  local j = rec_get(next_id)
  if not j or j.state ~= 'waiting' then
    return 0
  end
  local ev = event(cap, 'job.enqueued', next_id, j.kind, now, j.attempt, { 'm', 'chain: step ' .. index .. ' succeeded' })
  j.state, j.run_at, j.evs, j.x.input = 'queued', ms_text(now), evs_add(j.evs, ev), result
  rec_write(next_id, j)
  redis.call('ZADD', K .. 'queued', priority_of(next_id), qmember(now, tonumber(j.seq), next_id))
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
    local j = rec_get(cur)
    if not j then
      break
    end
    if j.state == 'waiting' then
      local ev = event(cap, 'job.cancelled', cur, j.kind, now, j.attempt, { 'm', reason })
      j.state, j.finished_at, j.evs, j.x.last_error = 'cancelled', ms_text(now), evs_add(j.evs, ev), reason
      rec_write(cur, j)
      redis.call('ZADD', K .. 'cancelled', now, cur)
      move('waiting', 'cancelled')
    end
    cur = j.x.chain_next
  end
end

-- After a chain step was retried: every later step that is `cancelled` goes back to
-- `waiting` (no event: it has not run, and its predecessor's success will queue it).
local function chain_resume_rest(next_id)
  local cur, seen = next_id, {}
  while cur and cur ~= '' and not seen[cur] do
    seen[cur] = true
    local j = rec_get(cur)
    if not j then
      break
    end
    if j.state == 'cancelled' then
      redis.call('ZREM', K .. 'cancelled', cur)
      j.state, j.finished_at, j.x.last_error = 'waiting', '', nil
      rec_write(cur, j)
      move('cancelled', 'waiting')
    end
    cur = j.x.chain_next
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
    local v = rec_raw(cur)
    cur = v and rec_field(v, 'chain_next')
  end
  if not cur or cur == '' then
    return nil
  end
  return cur
end

local function requeue(id, st, now, cap)
  local j = rec_get(id)
  local priority = priority_of(id)
  local seq = redis.call('INCR', K .. 'seq')
  redis.call('ZREM', K .. st, id)
  local ev = event(cap, 'job.enqueued', id, j.kind, now, 0, { 'm', 'retried' })
  -- A later chain step runs with its predecessor's result: queued with it when the
  -- predecessor succeeded, else back to waiting for it.
  local target = 'queued'
  local index = tonumber(j.x.chain_index or '0') or 0
  if j.x.chain_id and j.x.chain_id ~= '' and index > 0 then
    local pred = chain_predecessor(j.x.chain_id, index)
    local p = pred and rec_get(pred)
    if p and p.state == 'succeeded' and p.x.result and p.x.result ~= '' then
      j.x.input = p.x.result
    else
      target = 'waiting'
    end
  end
  -- The lease token is kept: it only grows, so a lease of an earlier attempt stays refused.
  j.state, j.attempt, j.lease_until, j.finished_at = target, '0', '', ''
  j.run_at, j.seq, j.streak, j.evs = ms_text(now), seq_text(seq), '0', evs_add(j.evs, ev)
  j.x.result, j.x.progress, j.x.progress_message = nil, nil, nil
  rec_write(id, j)
  if target == 'queued' then
    redis.call('ZADD', K .. 'queued', priority, qmember(now, seq, id))
  end
  move(st, target)
  if j.x.chain_next and j.x.chain_next ~= '' then
    chain_resume_rest(j.x.chain_next)
  end
end

-- ---------------------------------------------------------------------------------------
