-- retry_all_dead.lua: puts up to ARGV[3] dead jobs of one queue back in `queued` (see
-- retry.lua). Called repeatedly until it returns fewer than ARGV[3], so that Redis is never
-- blocked for more than a few milliseconds by a large dead set.
--
-- KEYS[1]  the queue's key prefix "{<prefix>:<queue>}:" (see common.lua)
-- ARGV[1]  now, ms, or '' for Redis' clock (see common.lua)
-- ARGV[2]  event stream cap
-- ARGV[3]  batch size
-- Returns  the number of jobs re-queued.

local now = clock_ms(ARGV[1])
local cap = ARGV[2]
local ids = redis.call('ZRANGE', K .. 'dead', 0, tonumber(ARGV[3]) - 1)
for i = 1, #ids do
  requeue(ids[i], 'dead', now, cap)
end
signal(#ids)
flush_counts()
return #ids
