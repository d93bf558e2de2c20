-- fetch.lua: promotes due jobs of one queue, then leases up to ARGV[2] jobs in priority
-- order (lowest priority number, earliest due, first enqueued): `queued -> running`,
-- attempt + 1, lease_token + 1, lease deadline now + lease; appends `job.started` for each.
--
-- KEYS[1]  the queue's key prefix "{<prefix>:<queue>}:" (see common.lua)
-- ARGV[1]  now, ms
-- ARGV[2]  max jobs to lease
-- ARGV[3]  lease length, ms
-- ARGV[4]  event stream cap
-- ARGV[5]  at most this many due jobs are promoted per call (bounds the work per call; the
--          rest are promoted by the next fetches)
-- Returns  an array, one entry per leased job: the job's hash as a flat field/value array *as
--          it was before the lease* (the caller applies the same changes: state running,
--          attempt + 1, lease_token + 1, lease_until, started_at = now, progress 0, no message).
--          Patching on the client keeps the script from rebuilding every job's hash in Lua.

local now = tonumber(ARGV[1])
local max = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
local cap = ARGV[4]
local promote = tonumber(ARGV[5])

local due = redis.call('ZRANGEBYSCORE', K .. 'due', '-inf', now, 'LIMIT', 0, promote)
for i = 1, #due do
  local id = due[i]
  local jk = job_key(id)
  local f = redis.call('HMGET', jk, 'state', 'priority', 'run_at', 'seq')
  if f[1] == 'scheduled' or f[1] == 'retrying' then
    redis.call('ZADD', K .. 'queued', f[2], qmember(tonumber(f[3]), tonumber(f[4]), id))
    redis.call('HSET', jk, 'state', 'queued')
    move(f[1], 'queued')
  end
end
if #due > 0 then
  redis.call('ZREM', K .. 'due', unpack(due))
end

local out = {}
local deadline = now + lease
local popped = {}
if max > 0 then
  popped = redis.call('ZPOPMIN', K .. 'queued', max)
end
for i = 1, #popped, 2 do
  local id = string.sub(popped[i], QPREFIX + 1)
  local jk = job_key(id)
  local raw = redis.call('HGETALL', jk)
  local state, attempt, token, kind, message
  for j = 1, #raw, 2 do
    local f = raw[j]
    if f == 'state' then
      state = raw[j + 1]
    elseif f == 'attempt' then
      attempt = raw[j + 1]
    elseif f == 'lease_token' then
      token = raw[j + 1]
    elseif f == 'kind' then
      kind = raw[j + 1]
    elseif f == 'progress_message' then
      message = raw[j + 1]
    end
  end
  if state == 'queued' then
    attempt = tonumber(attempt) + 1
    local ev = event(cap, 'job.started', id, kind, now, attempt)
    redis.call('HSET', jk, 'state', 'running', 'attempt', attempt, 'lease_token', tonumber(token) + 1,
      'lease_until', deadline, 'started_at', now, 'progress', 0, 'progress_message', '', 'evn', ev)
    redis.call('ZADD', K .. 'running', deadline, id)
    move('queued', 'running')
    out[#out + 1] = raw
  end
end
flush_counts()
return out
