-- checkpoint.lua: saves a running job's checkpoint (JSON text), kept across its retries.
--
-- KEYS[1]  the queue's key prefix "{<prefix>:<queue>}:" (see common.lua)
-- ARGV[1]  id
-- ARGV[2]  lease token
-- ARGV[3]  the checkpoint, JSON text
-- Returns  1 saved, 0 lease lost (not running under this token).

local j = rec_get(ARGV[1])
if not j or j.state ~= 'running' or j.token ~= ARGV[2] then
  return 0
end
j.x.checkpoint = ARGV[3]
rec_write(ARGV[1], j)
return 1
