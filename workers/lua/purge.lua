-- purge.lua: deletes up to ARGV[2] finished jobs of one queue that finished before ARGV[1],
-- of the given states (others are ignored), with their unique keys. Called repeatedly until
-- it returns fewer than ARGV[2] ids.
--
-- KEYS[1]  the queue's key prefix "{<prefix>:<queue>}:" (see common.lua)
-- ARGV[1]  before, ms (exclusive)
-- ARGV[2]  batch size
-- ARGV[3..] states: any of 'succeeded', 'dead', 'cancelled'
-- Returns  the ids deleted (the caller removes them from the global id -> queue index).

local before = ARGV[1]
local limit = tonumber(ARGV[2])
local out = {}
for a = 3, #ARGV do
  local st = ARGV[a]
  if (st == 'succeeded' or st == 'dead' or st == 'cancelled') and #out < limit then
    local ids = redis.call('ZRANGEBYSCORE', K .. st, '-inf', '(' .. before, 'LIMIT', 0, limit - #out)
    for i = 1, #ids do
      local id = ids[i]
      local jk = job_key(id)
      local u = redis.call('HGET', jk, 'unique_key')
      if u and redis.call('HGET', K .. 'unique', u) == id then
        redis.call('HDEL', K .. 'unique', u)
      end
      redis.call('DEL', jk)
      redis.call('ZREM', K .. 'all', id)
      move(st, nil)
      out[#out + 1] = id
    end
    if #ids > 0 then
      redis.call('ZREM', K .. st, unpack(ids))
    end
  end
end
flush_counts()
return out
