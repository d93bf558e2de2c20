-- progress.lua: records a running job's progress and appends `job.progress`.
--
-- KEYS[1]  the queue's key prefix "{<prefix>:<queue>}:" (see common.lua)
-- ARGV[1]  now, ms, or '' for Redis' clock (see common.lua)
-- ARGV[2]  event stream cap
-- ARGV[3]  id
-- ARGV[4]  lease token
-- ARGV[5]  percent, 0..100
-- ARGV[6]  '1' when a message follows, '0' to clear the message
-- ARGV[7]  message
-- Returns  1 recorded, 0 lease lost (not running under this token).

local now = clock_ms(ARGV[1])
local cap = ARGV[2]
local id, token, percent = ARGV[3], ARGV[4], ARGV[5]
local jk = job_key(id)
local f = redis.call('HMGET', jk, 'state', 'lease_token', 'kind', 'attempt', 'evs')
if f[1] ~= 'running' or f[2] ~= token then
  return 0
end
local extra = { 'p', percent }
if ARGV[6] == '1' then
  extra[3] = 'm'
  extra[4] = ARGV[7]
end
local ev = event(cap, 'job.progress', id, f[3], now, f[4] or 0, extra)
local evs = evs_add(f[5], ev)
if ARGV[6] == '1' then
  redis.call('HSET', jk, 'progress', percent, 'progress_message', ARGV[7], 'evs', evs)
else
  redis.call('HSET', jk, 'progress', percent, 'evs', evs)
  redis.call('HDEL', jk, 'progress_message')
end
return 1
