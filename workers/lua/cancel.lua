-- cancel.lua: cancels a job in any non-final state and appends `job.cancelled`. A running
-- job keeps its lease token, so the worker's next heartbeat learns it was cancelled. A chain
-- step also cancels the waiting steps after it.
--
-- KEYS[1]  the queue's key prefix "{<prefix>:<queue>}:" (see common.lua)
-- ARGV[1]  now, ms, or '' for Redis' clock (see common.lua)
-- ARGV[2]  event stream cap
-- ARGV[3]  id
-- Returns  {'ok', the job's record, its d (see common.lua)}, {'nf'} when there is no such job,
--          or {'final', state} when the job is already finished.

local now = clock_ms(ARGV[1])
local cap = ARGV[2]
local id = ARGV[3]
local j = rec_get(id)
if not j then
  return { 'nf' }
end
local st = j.state
if st == 'succeeded' or st == 'dead' or st == 'cancelled' then
  return { 'final', st }
end
if st == 'queued' then
  redis.call('ZREM', K .. 'queued', qmember(tonumber(j.run_at), tonumber(j.seq), id))
elseif st == 'scheduled' or st == 'retrying' then
  redis.call('ZREM', K .. 'due', id)
elseif st == 'running' then
  redis.call('ZREM', K .. 'running', id)
end
local ev = event(cap, 'job.cancelled', id, j.kind, now, j.attempt)
j.state, j.lease_until, j.finished_at, j.evs = 'cancelled', '', ms_text(now), evs_add(j.evs, ev)
local rec = rec_text(j)
redis.call('SET', job_key(id), rec)
redis.call('ZADD', K .. 'cancelled', now, id)
move(st, 'cancelled')
if j.x.chain_next and j.x.chain_next ~= '' then
  chain_cancel_rest(id, j.x.chain_index, j.x.chain_next, 'cancelled', now, cap)
end
flush_counts()
return { 'ok', rec, redis.call('GET', d_key(id)) }
