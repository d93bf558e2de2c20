-- finish.lua: ends attempts of one queue. Each entry is applied only while the job is
-- `running` under the same lease token; otherwise it is refused (lease lost) and changes
-- nothing. The events of the entries applied go in one stream entry.
--
-- KEYS[1]  the queue's key prefix "{<prefix>:<queue>}:" (see common.lua)
-- ARGV[1]  now, ms, or '' for Redis' clock (see common.lua)
-- ARGV[2]  event stream cap
-- ARGV[3]  n, the number of entries (at most 500); then 5 values per entry: id, lease token,
--          outcome, a, b
--          outcome 'ok'      a = result JSON            -> succeeded, job.succeeded (progress
--                                                          is not written: a succeeded job's
--                                                          progress reads as 100);
--                                                          a chain step queues the next step
--                                                          with `input` = the result
--                  'retry'   a = delay ms, b = error    -> retrying,  job.retrying, due
--                                                          now + delay (a delay, not a
--                                                          time: the caller's clock may
--                                                          be off)
--                  'dead'    a = error                  -> dead,      job.dead; a chain step
--                                                          cancels the waiting steps after it
--                  'snooze'  a = delay ms, b = reason   -> scheduled at now + delay,
--                                                          attempt - 1,
--                                                          job.enqueued with message "snoozed";
--                                                          last_error = the reason unless empty
--                  'release' a = reason                 -> queued at once, attempt - 1,
--                                                          job.released (not an interruption:
--                                                          interruptions and streak unchanged)
-- Returns  an array of n integers: 1 applied, 0 lease lost.

local now = clock_ms(ARGV[1])
local now_s = ms_text(now)
local cap = ARGV[2]
local n = tonumber(ARGV[3])

-- A record's optional fields (from its first 0xFE on) without its last error.
local function without_error(tail)
  if string.find(tail, '\254last_error\255', 1, true) then
    return (string.gsub(tail, '\254last_error\255[^\254]*', ''))
  end
  return tail
end

-- A running job's record: its attempt and lease token, and where its `h` goes on after them
-- (see common.lua). The rest of the record is cut at the separators string.find finds
-- (memchr): one pattern capturing every part of `h` cost 3% more Redis work a job
-- (callgrind, docs/research/redis-layout-v2/measure.sh), a string made per capture.
local RUNNING = '^running|(%d*)|(%d*)|()'
local find, sub = string.find, string.sub

local out = {}
local ok_n, fail_n, wake = 0, 0, 0
-- Per entry applied, the parts of its job's new record, which is written after this loop
-- (its `evs` needs the id of the stream entry written then): `heads` (its `h` up to `evs`),
-- the `evs` it had, its kind, `tails` (the record's optional fields, but for an
-- optional field set here) and that field (`adds`, as 0xFE name 0xFF, and its value).
-- Also its ARGV base, key, due time (retry and snooze) or place in line (release: run_at
-- and seq), chain link and optional fields as read (for its chain_index). The same lease twice in
-- one call: only the first is applied, as if in two calls.
local bases, keys, heads, evss, kinds, tails, adds, addvs = {}, {}, {}, {}, {}, {}, {}, {}
local ats, nexts, olds, seen = {}, {}, {}, {}
-- Every entry's record, read with one MGET.
local eids, ekeys = {}, {}
for i = 0, n - 1 do
  local id = ARGV[4 + i * 5]
  eids[i + 1] = id
  ekeys[i + 1] = job_key(id)
end
local vs = {}
if n > 0 then
  vs = rec_many(eids, ekeys)
end
for i = 0, n - 1 do
  local b = 4 + i * 5
  local id, token, code = ARGV[b], ARGV[b + 1], ARGV[b + 2]
  local jk, v = ekeys[i + 1], vs[i + 1]
  local attempt, tok, p
  if v then
    attempt, tok, p = string.match(v, RUNNING)
  end
  -- The bars after lease_until, started_at, run_at, seq, finished_at and the streak, then
  -- the 0xFF before the kind (none of them: not a record this broker wrote, refused like a
  -- lost lease), and where the optional fields start, if it has any.
  local b4 = p and find(v, '|', p, true)
  local b5 = b4 and find(v, '|', b4 + 1, true)
  local b6 = b5 and find(v, '|', b5 + 1, true)
  local b7 = b6 and find(v, '|', b6 + 1, true)
  local b8 = b7 and find(v, '|', b7 + 1, true)
  local b9 = b8 and find(v, '|', b8 + 1, true)
  local pk = b9 and find(v, '\255', b9 + 1, true)
  if not pk or tok ~= token or seen[id] then
    out[#out + 1] = 0
  else
    pk = pk + 1
    local pt = find(v, '\254', pk, true)
    local evs, kind, tail = sub(v, b9 + 1, pk - 2), sub(v, pk, (pt or #v + 1) - 1), ''
    if pt then
      tail = sub(v, pt)
    end
    local a = ARGV[b + 3]
    local old = tail
    local at = nil
    local add, addv = '', ''
    local head
    if code == 'ok' then
      add_event('job.succeeded', id, kind, attempt, 'r', a)
      head = 'succeeded|' .. attempt .. '|' .. tok .. '|' .. sub(v, p, b7) .. now_s .. '|0|'
      if find(tail, '\254result\255', 1, true) then
        tail = string.gsub(tail, '\254result\255[^\254]*', '')
      end
      add, addv = '\254result\255', a
    elseif code == 'retry' then
      add_event('job.retrying', id, kind, attempt, 'e', ARGV[b + 4])
      at = ms_text(now + tonumber(a))
      head = 'retrying|' .. attempt .. '|' .. tok .. '|' .. sub(v, p, b5) .. at .. '|' .. sub(v, b6 + 1, b8) .. '0|'
      tail = without_error(tail)
      add, addv = '\254last_error\255', ARGV[b + 4]
    elseif code == 'dead' then
      add_event('job.dead', id, kind, attempt, 'e', a)
      head = 'dead|' .. attempt .. '|' .. tok .. '|' .. sub(v, p, b7) .. now_s .. '|0|'
      tail = without_error(tail)
      add, addv = '\254last_error\255', a
    elseif code == 'snooze' then
      -- No event type names "scheduled": a snooze is recorded as enqueued again, for later,
      -- naming the attempt that was put off (as a release's event does); the job's attempt
      -- goes back by one, as that attempt is not counted.
      add_event('job.enqueued', id, kind, attempt, 'm', 'snoozed')
      at = ms_text(now + tonumber(a))
      head = 'scheduled|' .. itoa(tonumber(attempt) - 1) .. '|' .. tok .. '|' .. sub(v, p, b5) .. at .. '|' .. sub(v, b6 + 1, b8) .. '0|'
      if ARGV[b + 4] ~= '' then
        tail = without_error(tail)
        add, addv = '\254last_error\255', ARGV[b + 4]
      end
    elseif code == 'release' then
      add_event('job.released', id, kind, attempt, 'm', a)
      -- Back at its old place in line: its run_at and sequence are unchanged, and so is its
      -- interruption streak (a release neither counts nor forgives one).
      head = 'queued|' .. itoa(tonumber(attempt) - 1) .. '|' .. tok .. '|' .. sub(v, p, b9)
      at = sub(v, b5 + 1, b7 - 1)
    else
      return redis.error_reply('finish.lua: unknown outcome ' .. tostring(code))
    end
    local k = #bases + 1
    seen[id] = true
    bases[k] = b
    keys[k] = jk
    heads[k] = head
    evss[k] = evs
    kinds[k] = kind
    tails[k] = tail
    adds[k] = add
    addvs[k] = addv
    ats[k] = at
    olds[k] = old
    nexts[k] = find(old, '\254chain_next\255', 1, true) and rec_field(old, 'chain_next')
    out[#out + 1] = 1
  end
end

if #bases > 0 then
  local ev = flush_events(cap, now)
  local stopped, succeeded, dead = {}, {}, {}
  -- The new records, written with one MSET.
  local mset = {}
  for i = 1, #bases do
    -- `evs` with this call's entry added (never there already: the entry is new).
    local evs = evss[i]
    mset[2 * i - 1] = keys[i]
    if evs == '' then
      mset[2 * i] = heads[i] .. ev .. '\255' .. kinds[i] .. tails[i] .. adds[i] .. addvs[i]
    else
      mset[2 * i] = heads[i] .. evs .. ' ' .. ev .. '\255' .. kinds[i] .. tails[i] .. adds[i] .. addvs[i]
    end
  end
  redis.call('MSET', unpack(mset))
  for i = 1, #bases do
    local b = bases[i]
    local id, code = ARGV[b], ARGV[b + 2]
    stopped[#stopped + 1] = id
    if code == 'ok' then
      succeeded[#succeeded + 1] = id
      move('running', 'succeeded')
      ok_n = ok_n + 1
      if nexts[i] then
        wake = wake + chain_promote(nexts[i], rec_field(olds[i], 'chain_index'), ARGV[b + 3], now, cap)
      end
    elseif code == 'retry' then
      redis.call('ZADD', K .. 'due', ats[i], id)
      move('running', 'retrying')
      fail_n = fail_n + 1
      wake = wake + 1
    elseif code == 'dead' then
      dead[#dead + 1] = now_s
      dead[#dead + 1] = id
      move('running', 'dead')
      fail_n = fail_n + 1
      if nexts[i] then
        chain_cancel_rest(id, rec_field(olds[i], 'chain_index'), nexts[i], 'dead', now, cap)
      end
    elseif code == 'snooze' then
      redis.call('ZADD', K .. 'due', ats[i], id)
      move('running', 'scheduled')
      wake = wake + 1
    else
      local p = priority_of(id)
      local run_at, seq = string.match(ats[i], '^([^|]*)|(.*)$')
      redis.call('ZADD', K .. 'queued', p, qmember(tonumber(run_at), tonumber(seq), id))
      move('running', 'queued')
      wake = wake + 1
    end
  end
  redis.call('ZREM', K .. 'running', unpack(stopped))
  if #succeeded > 0 then
    redis.call('RPUSH', K .. 'done', unpack(succeeded))
  end
  if #dead > 0 then
    redis.call('ZADD', K .. 'dead', unpack(dead))
  end
end
stat('ok', now, ok_n)
stat('fail', now, fail_n)
signal(wake)
flush_counts()
return out
