-- checkpoint.lua: saves a running job's checkpoint (JSON text), kept across its retries.
--
-- KEYS[1]  the queue's key prefix "{<prefix>:<queue>}:" (see common.lua)
-- ARGV[1]  id
-- ARGV[2]  lease token
-- ARGV[3]  the checkpoint, JSON text
-- Returns  1 saved, 0 lease lost (not running under this token).

local jk = job_key(ARGV[1])
local f = redis.call('HMGET', jk, 'state', 'lease_token')
if f[1] ~= 'running' or f[2] ~= ARGV[2] then
  return 0
end
redis.call('HSET', jk, 'checkpoint', ARGV[3])
return 1
