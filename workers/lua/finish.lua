-- finish.lua: ends attempts of one queue. Each entry is applied only while the job is
-- `running` under the same lease token; otherwise it is refused (lease lost) and changes
-- nothing.
--
-- KEYS[1]  the queue's key prefix "{<prefix>:<queue>}:" (see common.lua)
-- ARGV[1]  now, ms
-- ARGV[2]  event stream cap
-- ARGV[3]  n, the number of entries; then 5 values per entry: id, lease token, outcome, a, b
--          outcome 'ok'      a = result JSON            -> succeeded (progress 100), job.succeeded
--                  'retry'   a = due ms, b = error      -> retrying,  job.retrying
--                  'dead'    a = error                  -> dead,      job.dead
--                  'snooze'  a = due ms                 -> scheduled, attempt - 1,
--                                                          job.enqueued with message "snoozed"
--                  'release' a = reason                 -> queued at once, attempt - 1,
--                                                          job.interrupted (not an interruption)
-- Returns  an array of n integers: 1 applied, 0 lease lost.

local now = tonumber(ARGV[1])
local cap = ARGV[2]
local n = tonumber(ARGV[3])

local out = {}
local ok_n, fail_n, wake = 0, 0, 0
for i = 0, n - 1 do
  local b = 4 + i * 5
  local id, token, code, a, bb = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
  local jk = job_key(id)
  local f = redis.call('HMGET', jk, 'state', 'lease_token', 'kind', 'attempt', 'priority', 'run_at', 'seq')
  if f[1] ~= 'running' or f[2] ~= token then
    out[#out + 1] = 0
  else
    local kind = f[3]
    local attempt = tonumber(f[4])
    redis.call('ZREM', K .. 'running', id)
    if code == 'ok' then
      local ev = event(cap, 'job.succeeded', id, kind, now, attempt, { 'r', a })
      redis.call('HSET', jk, 'lease_until', '', 'state', 'succeeded', 'result', a, 'finished_at', now, 'progress', 100,
        'interruption_streak', 0, 'evn', ev)
      redis.call('ZADD', K .. 'succeeded', now, id)
      move('running', 'succeeded')
      ok_n = ok_n + 1
    elseif code == 'retry' then
      local at = tonumber(a)
      local ev = event(cap, 'job.retrying', id, kind, now, attempt, { 'e', bb })
      redis.call('HSET', jk, 'lease_until', '', 'state', 'retrying', 'run_at', at, 'last_error', bb,
        'interruption_streak', 0, 'evn', ev)
      redis.call('ZADD', K .. 'due', at, id)
      move('running', 'retrying')
      fail_n = fail_n + 1
      wake = wake + 1
    elseif code == 'dead' then
      local ev = event(cap, 'job.dead', id, kind, now, attempt, { 'e', a })
      redis.call('HSET', jk, 'lease_until', '', 'state', 'dead', 'last_error', a, 'finished_at', now,
        'interruption_streak', 0, 'evn', ev)
      redis.call('ZADD', K .. 'dead', now, id)
      move('running', 'dead')
      fail_n = fail_n + 1
    elseif code == 'snooze' then
      local at = tonumber(a)
      -- No event type names "scheduled": a snooze is recorded as enqueued again, for later.
      local ev = event(cap, 'job.enqueued', id, kind, now, attempt - 1, { 'm', 'snoozed' })
      redis.call('HSET', jk, 'lease_until', '', 'state', 'scheduled', 'run_at', at, 'attempt', attempt - 1,
        'interruption_streak', 0, 'evn', ev)
      redis.call('ZADD', K .. 'due', at, id)
      move('running', 'scheduled')
      wake = wake + 1
    elseif code == 'release' then
      -- Back at its old place in line (its run_at and sequence are unchanged).
      local ev = event(cap, 'job.interrupted', id, kind, now, attempt, { 'm', a })
      redis.call('HSET', jk, 'lease_until', '', 'state', 'queued', 'attempt', attempt - 1, 'evn', ev)
      redis.call('ZADD', K .. 'queued', f[5], qmember(tonumber(f[6]), tonumber(f[7]), id))
      move('running', 'queued')
      wake = wake + 1
    else
      return redis.error_reply('finish.lua: unknown outcome ' .. tostring(code))
    end
    out[#out + 1] = 1
  end
end
stat('ok', now, ok_n)
stat('fail', now, fail_n)
signal(wake)
flush_counts()
return out
