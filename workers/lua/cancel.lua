-- cancel.lua: cancels a job in any non-final state and appends `job.cancelled`. A running
-- job keeps its lease token, so the worker's next heartbeat learns it was cancelled. A chain
-- step also cancels the waiting steps after it.
--
-- KEYS[1]  the queue's key prefix "{<prefix>:<queue>}:" (see common.lua)
-- ARGV[1]  now, ms, or '' for Redis' clock (see common.lua)
-- ARGV[2]  event stream cap
-- ARGV[3]  id
-- Returns  {'ok', job hash as a flat field/value array}, {'nf'} when there is no such job,
--          or {'final', state} when the job is already finished.

local now = clock_ms(ARGV[1])
local cap = ARGV[2]
local id = ARGV[3]
local jk = job_key(id)
local f = redis.call('HMGET', jk, 'state', 'kind', 'attempt', 'run_at', 'seq', 'chain_index', 'chain_next', 'evs')
local st = f[1]
if not st then
  return { 'nf' }
end
if st == 'succeeded' or st == 'dead' or st == 'cancelled' then
  return { 'final', st }
end
if st == 'queued' then
  redis.call('ZREM', K .. 'queued', qmember(tonumber(f[4]), tonumber(f[5]), id))
elseif st == 'scheduled' or st == 'retrying' then
  redis.call('ZREM', K .. 'due', id)
elseif st == 'running' then
  redis.call('ZREM', K .. 'running', id)
end
local ev = event(cap, 'job.cancelled', id, f[2], now, f[3] or 0)
redis.call('HSET', jk, 'lease_until', '', 'state', 'cancelled', 'finished_at', now, 'evs', evs_add(f[8], ev))
redis.call('ZADD', K .. 'cancelled', now, id)
move(st, 'cancelled')
if f[7] and f[7] ~= '' then
  chain_cancel_rest(id, f[6], f[7], 'cancelled', now, cap)
end
flush_counts()
return { 'ok', redis.call('HGETALL', jk) }
