-- retry.lua: puts one dead or cancelled job back in `queued` with attempt 0 (a fresh set of
-- retries), behind the jobs already queued at its priority; appends `job.enqueued`.
--
-- KEYS[1]  the queue's key prefix "{<prefix>:<queue>}:" (see common.lua)
-- ARGV[1]  now, ms, or '' for Redis' clock (see common.lua)
-- ARGV[2]  event stream cap
-- ARGV[3]  id
-- Returns  {'ok', the job's record, its d (see common.lua)}, {'nf'} when there is no such job,
--          or {'state', state} when the job is neither dead nor cancelled.

local now = clock_ms(ARGV[1])
local cap = ARGV[2]
local id = ARGV[3]
local j = rec_get(id)
if not j then
  return { 'nf' }
end
local st = j.state
if st ~= 'dead' and st ~= 'cancelled' then
  return { 'state', st }
end
requeue(id, st, now, cap)
signal(1)
flush_counts()
return { 'ok', rec_raw(id), redis.call('GET', d_key(id)) }
