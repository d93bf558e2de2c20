-- get.lua: one job's record and d (see common.lua), or nil when there is no such job. A job still
-- stored as a hash (layout 1) is rewritten as its record first (see rec_raw), so that a
-- reader never meets a key of the wrong type.
--
-- KEYS[1]  the queue's key prefix "{<prefix>:<queue>}:" (see common.lua)
-- ARGV[1]  id
-- Returns  {record, d}, or nil.

local v = rec_raw(ARGV[1])
if not v then
  return false
end
return { v, redis.call('GET', d_key(ARGV[1])) }
