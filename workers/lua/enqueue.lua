-- enqueue.lua: stores new jobs of one queue, each `queued` or (run_at in the future)
-- `scheduled`, and appends `job.enqueued` for each.
--
-- KEYS[1]  the queue's key prefix "{<prefix>:<queue>}:" (see common.lua)
-- ARGV[1]  now, ms
-- ARGV[2]  event stream cap
-- ARGV[3]  queue name
-- ARGV[4]  n, the number of jobs; then 8 values per job:
--          id, kind, payload (JSON), priority, run_at ('' or past = now), max_retries,
--          timeout_ms ('' = none), unique_key ('' = none)
-- Returns  a flat array, two entries per job in order: the id (the existing job's id when
--          the unique key or the id was taken), then 1 if created or 0 if not.

local now = tonumber(ARGV[1])
local cap = ARGV[2]
local queue = ARGV[3]
local n = tonumber(ARGV[4])

local out = {}
local woken = 0
local last_seq = redis.call('INCRBY', K .. 'seq', n)
for i = 0, n - 1 do
  local b = 5 + i * 8
  local id, kind, payload, priority = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local run_at, max_retries, timeout_ms, unique = ARGV[b + 4], ARGV[b + 5], ARGV[b + 6], ARGV[b + 7]
  local jk = job_key(id)
  local existing = nil
  if unique ~= '' then
    local other = redis.call('HGET', K .. 'unique', unique)
    if other and redis.call('EXISTS', job_key(other)) == 1 then
      existing = other
    end
  end
  if not existing and redis.call('EXISTS', jk) == 1 then
    existing = id
  end
  if existing then
    out[#out + 1] = existing
    out[#out + 1] = 0
  else
    local seq = last_seq - n + 1 + i
    -- A run time in the past is simply now: it does not jump the line.
    local at = now
    if run_at ~= '' and tonumber(run_at) > now then
      at = tonumber(run_at)
    end
    local state = 'queued'
    if at > now then
      state = 'scheduled'
    end
    local ev = event(cap, 'job.enqueued', id, kind, now, 0)
    local fields = { 'id', id, 'queue', queue, 'kind', kind, 'payload', payload, 'priority', priority,
      'state', state, 'run_at', at, 'attempt', 0, 'max_retries', max_retries, 'interruptions', 0,
      'interruption_streak', 0, 'lease_token', 0, 'progress', 0, 'created_at', now, 'seq', seq,
      'ev0', ev, 'evn', ev }
    if timeout_ms ~= '' then
      fields[#fields + 1] = 'timeout_ms'
      fields[#fields + 1] = timeout_ms
    end
    if unique ~= '' then
      fields[#fields + 1] = 'unique_key'
      fields[#fields + 1] = unique
      redis.call('HSET', K .. 'unique', unique, id)
    end
    redis.call('HSET', jk, unpack(fields))
    redis.call('ZADD', K .. 'all', 0, id)
    if state == 'queued' then
      redis.call('ZADD', K .. 'queued', priority, qmember(at, seq, id))
    else
      redis.call('ZADD', K .. 'due', at, id)
    end
    move(nil, state)
    woken = woken + 1
    out[#out + 1] = id
    out[#out + 1] = 1
  end
end
-- Scheduled jobs wake waiters too, so that they shorten their wait to the new due time.
signal(woken)
flush_counts()
return out
