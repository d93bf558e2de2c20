-- drop_queue.lua: deletes up to ARGV[1] jobs of one queue; once none is left, deletes every
-- other key of the queue too (the per-second stat counters expire on their own). Called
-- repeatedly until it returns fewer than ARGV[1] ids.
--
-- KEYS[1]  the queue's key prefix "{<prefix>:<queue>}:" (see common.lua)
-- ARGV[1]  batch size
-- Returns  the ids deleted (the caller removes them from the global id -> queue index).

local limit = tonumber(ARGV[1])
local ids = redis.call('ZRANGE', K .. 'all', 0, limit - 1)
for i = 1, #ids do
  redis.call('DEL', job_key(ids[i]), d_key(ids[i]))
end
if #ids > 0 then
  redis.call('ZREM', K .. 'all', unpack(ids))
end
if #ids < limit then
  for _, lv in ipairs(redis.call('ZRANGE', K .. 'lanes', 0, -1)) do
    redis.call('DEL', K .. 'lane:' .. lv)
  end
  redis.call('DEL', K .. 'all', K .. 'queued', K .. 'due', K .. 'running', K .. 'succeeded', K .. 'done', K .. 'dead',
    K .. 'cancelled', K .. 'lanes', K .. 'counts', K .. 'events', K .. 'signal', K .. 'unique', K .. 'seq', K .. 'rate')
end
return ids
