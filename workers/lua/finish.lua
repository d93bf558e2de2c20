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

local out = {}
local ok_n, fail_n, wake = 0, 0, 0
-- Entries applied: the ARGV base of each, the fields HMGET read and the job's key.
-- The same lease twice in one call: only the first is applied, as if in two calls.
local bases, fields, keys, seen = {}, {}, {}, {}
for i = 0, n - 1 do
  local b = 4 + i * 5
  local id, token, code = ARGV[b], ARGV[b + 1], ARGV[b + 2]
  local jk = job_key(id)
  local f = redis.call('HMGET', jk, 'state', 'lease_token', 'kind', 'attempt', 'interruption_streak',
    'chain_next', 'evs')
  if f[1] ~= 'running' or f[2] ~= token or seen[id] then
    out[#out + 1] = 0
  else
    -- The attempt as text for the events (the stored text, '0' when absent).
    local kind, attempt = f[3], f[4] or '0'
    if code == 'ok' then
      add_event('job.succeeded', id, kind, attempt, 'r', ARGV[b + 3])
    elseif code == 'retry' then
      add_event('job.retrying', id, kind, attempt, 'e', ARGV[b + 4])
    elseif code == 'dead' then
      add_event('job.dead', id, kind, attempt, 'e', ARGV[b + 3])
    elseif code == 'snooze' then
      -- No event type names "scheduled": a snooze is recorded as enqueued again, for later.
      add_event('job.enqueued', id, kind, tonumber(attempt) - 1, 'm', 'snoozed')
    elseif code == 'release' then
      add_event('job.released', id, kind, attempt, 'm', ARGV[b + 3])
    else
      return redis.error_reply('finish.lua: unknown outcome ' .. tostring(code))
    end
    seen[id] = true
    bases[#bases + 1] = b
    fields[#fields + 1] = f
    keys[#keys + 1] = jk
    out[#out + 1] = 1
  end
end

if #bases > 0 then
  local ev = flush_events(cap, now)
  local stopped, succeeded, dead = {}, {}, {}
  for i = 1, #bases do
    local b, f = bases[i], fields[i]
    local id, code, a = ARGV[b], ARGV[b + 2], ARGV[b + 3]
    local jk = keys[i]
    local attempt = tonumber(f[4]) or 0
    local evs = evs_add(f[7], ev)
    stopped[#stopped + 1] = id
    -- An attempt that ended normally ends an interruption streak.
    if f[5] and f[5] ~= '0' and code ~= 'release' then
      redis.call('HSET', jk, 'interruption_streak', 0)
    end
    if code == 'ok' then
      redis.call('HSET', jk, 'state', 'succeeded', 'result', a, 'finished_at', now_s, 'evs', evs)
      succeeded[#succeeded + 1] = now_s
      succeeded[#succeeded + 1] = id
      move('running', 'succeeded')
      ok_n = ok_n + 1
      if f[6] then
        wake = wake + chain_promote(f[6], redis.call('HGET', jk, 'chain_index'), a, now, cap)
      end
    elseif code == 'retry' then
      local at = ms_text(now + tonumber(a))
      redis.call('HSET', jk, 'state', 'retrying', 'run_at', at, 'last_error', ARGV[b + 4],
        'evs', evs)
      redis.call('ZADD', K .. 'due', at, id)
      move('running', 'retrying')
      fail_n = fail_n + 1
      wake = wake + 1
    elseif code == 'dead' then
      redis.call('HSET', jk, 'state', 'dead', 'last_error', a, 'finished_at', now_s, 'evs', evs)
      dead[#dead + 1] = now_s
      dead[#dead + 1] = id
      move('running', 'dead')
      fail_n = fail_n + 1
      if f[6] then
        chain_cancel_rest(id, redis.call('HGET', jk, 'chain_index'), f[6], 'dead', now, cap)
      end
    elseif code == 'snooze' then
      local at = ms_text(now + tonumber(a))
      redis.call('HSET', jk, 'state', 'scheduled', 'run_at', at, 'attempt', attempt - 1,
        'evs', evs)
      if ARGV[b + 4] ~= '' then
        redis.call('HSET', jk, 'last_error', ARGV[b + 4])
      end
      redis.call('ZADD', K .. 'due', at, id)
      move('running', 'scheduled')
      wake = wake + 1
    else
      -- 'release': back at its old place in line (its run_at and sequence are unchanged).
      local q = redis.call('HMGET', jk, 'd', 'run_at', 'seq')
      redis.call('HSET', jk, 'state', 'queued', 'attempt', attempt - 1, 'evs', evs)
      redis.call('ZADD', K .. 'queued', d_priority(q[1]), qmember(tonumber(q[2]), tonumber(q[3]), id))
      move('running', 'queued')
      wake = wake + 1
    end
  end
  redis.call('ZREM', K .. 'running', unpack(stopped))
  if #succeeded > 0 then
    redis.call('ZADD', K .. 'succeeded', unpack(succeeded))
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
