-- retry_all_dead.lua: puts up to ARGV[3] dead jobs of one queue back in `queued` (see
-- retry.lua), the earliest dead first, of those dead at or before a bound: the time the
-- request began. Called repeatedly until it returns fewer than ARGV[3], so that Redis is never
-- blocked for more than a few milliseconds by a large dead set; a job retried by an earlier
-- call that ran and died again meanwhile died after the bound, and is not retried twice.
--
-- KEYS[1]  the queue's key prefix "{<prefix>:<queue>}:" (see common.lua)
-- ARGV[1]  now, ms, or '' for Redis' clock (see common.lua)
-- ARGV[2]  event stream cap
-- ARGV[3]  batch size
-- ARGV[4]  the bound, ms: '' on a request's first call, which takes its own now; later calls
--          pass the bound the first one answered
-- Returns  {the number of jobs re-queued, the number of dead-set entries taken (a batch
--          short of ARGV[3] is the last), the bound (ms text)}.

local now = clock_ms(ARGV[1])
local cap = ARGV[2]
local bound = ARGV[4]
if bound == '' then
  bound = ms_text(now)
end
local ids = redis.call('ZRANGEBYSCORE', K .. 'dead', '-inf', bound, 'LIMIT', 0, tonumber(ARGV[3]))
local n = 0
for i = 1, #ids do
  -- An entry whose record is gone (`drop_queue` deletes records first, sets last) is let go.
  if rec_raw(ids[i]) then
    requeue(ids[i], 'dead', now, cap)
    n = n + 1
  else
    redis.call('ZREM', K .. 'dead', ids[i])
  end
end
signal(n)
flush_counts()
return { n, #ids, bound }
