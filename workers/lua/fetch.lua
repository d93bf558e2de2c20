-- fetch.lua: promotes due jobs of one queue, then leases up to ARGV[2] jobs in priority
-- order (lowest priority number, earliest due, first enqueued): `queued -> running`,
-- attempt + 1, lease_token + 1, lease deadline now + lease; appends `job.started` for each,
-- all in one stream entry.
--
-- KEYS[1]  the queue's key prefix "{<prefix>:<queue>}:" (see common.lua)
-- ARGV[1]  now, ms
-- ARGV[2]  max jobs to lease (at most 500: the events of one call go in one XADD)
-- ARGV[3]  lease length, ms
-- ARGV[4]  event stream cap
-- ARGV[5]  at most this many due jobs are promoted per call (bounds the work per call; the
--          rest are promoted by the next fetches)
-- Returns  an array, one entry per leased job: an array of the job's fields *as they were
--          before the lease*, in the order of FIELDS below but with the id in place of the
--          state (a missing field is nil). The caller applies the changes (state running,
--          attempt + 1, lease_token + 1, lease_until, started_at = now, progress 0, no
--          message): returning what HMGET read keeps the script from building tables.

local FIELDS = { 'state', 'attempt', 'lease_token', 'kind', 'payload', 'priority', 'run_at', 'max_retries',
  'timeout_ms', 'interruptions', 'interruption_streak', 'last_error', 'unique_key', 'created_at', 'chain_id',
  'chain_index', 'chain_next', 'progress', 'progress_message' }

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
if max > 500 then
  max = 500
end
local popped = {}
if max > 0 then
  popped = redis.call('ZPOPMIN', K .. 'queued', max)
end
for i = 1, #popped, 2 do
  local id = string.sub(popped[i], QPREFIX + 1)
  local f = redis.call('HMGET', job_key(id), unpack(FIELDS))
  if f[1] == 'queued' then
    add_event('job.started', id, f[4], (tonumber(f[2]) or 0) + 1)
    f[1] = id
    out[#out + 1] = f
  end
end
if #out > 0 then
  local ev = flush_events(cap, now)
  local deadline = now + lease
  local running = {}
  for i = 1, #out do
    local f = out[i]
    local id = f[1]
    local jk = job_key(id)
    redis.call('HSET', jk, 'state', 'running', 'attempt', (tonumber(f[2]) or 0) + 1, 'lease_token',
      (tonumber(f[3]) or 0) + 1, 'lease_until', deadline, 'started_at', now, 'evn', ev)
    if f[18] or f[19] then
      redis.call('HDEL', jk, 'progress', 'progress_message')
    end
    running[#running + 1] = deadline
    running[#running + 1] = id
  end
  redis.call('ZADD', K .. 'running', unpack(running))
  move('queued', 'running', #out)
end
flush_counts()
return out
