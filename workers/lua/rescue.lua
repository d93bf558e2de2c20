-- rescue.lua: returns running jobs of one queue whose lease expired (deadline < now) to
-- `queued` at their old place in line (attempt - 1, interruptions + 1, streak + 1,
-- `job.interrupted`), or to `dead` (`job.dead`) once interrupted ARGV[3] times in a row (a
-- chain step that dies so cancels the waiting steps after it).
--
-- KEYS[1]  the queue's key prefix "{<prefix>:<queue>}:" (see common.lua)
-- ARGV[1]  now, ms, or '' for Redis' clock (see common.lua)
-- ARGV[2]  event stream cap
-- ARGV[3]  max interruptions in a row before a job is dead (a poison pill)
-- ARGV[4]  at most this many jobs per call
-- Returns  one {id, kind, state} per job rescued, state 'queued' or 'dead' (what the rescuer
--          counts it by, without reading the job back).

local now = clock_ms(ARGV[1])
local cap = ARGV[2]
local max_int = tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', K .. 'running', '-inf', '(' .. ms_text(now), 'LIMIT', 0, tonumber(ARGV[4]))
local out = {}
local requeued, failed = 0, 0
for i = 1, #ids do
  local id = ids[i]
  local jk = job_key(id)
  redis.call('ZREM', K .. 'running', id)
  local f = redis.call('HMGET', jk, 'state', 'kind', 'attempt', 'interruptions', 'interruption_streak',
    'd', 'run_at', 'seq', 'chain_index', 'chain_next', 'evs')
  if f[1] == 'running' then
    local run = tonumber(f[3]) or 0
    local attempt = run - 1
    if attempt < 0 then
      attempt = 0
    end
    local interruptions = (tonumber(f[4]) or 0) + 1
    local streak = (tonumber(f[5]) or 0) + 1
    if streak >= max_int then
      local err = 'poison pill: interrupted ' .. streak .. ' times in a row (its lease expired each time)'
      local ev = event(cap, 'job.dead', id, f[2], now, run, { 'e', err })
      redis.call('HSET', jk, 'lease_until', '', 'state', 'dead', 'attempt', attempt, 'interruptions', interruptions,
        'interruption_streak', streak, 'last_error', err, 'finished_at', now, 'evs', evs_add(f[11], ev))
      redis.call('ZADD', K .. 'dead', now, id)
      move('running', 'dead')
      failed = failed + 1
      out[#out + 1] = { id, f[2] or '', 'dead' }
      if f[10] and f[10] ~= '' then
        chain_cancel_rest(id, f[9], f[10], 'dead', now, cap)
      end
    else
      local ev = event(cap, 'job.interrupted', id, f[2], now, run, { 'm', 'lease expired' })
      redis.call('HSET', jk, 'lease_until', '', 'state', 'queued', 'attempt', attempt, 'interruptions', interruptions,
        'interruption_streak', streak, 'evs', evs_add(f[11], ev))
      redis.call('ZADD', K .. 'queued', d_priority(f[6]), qmember(tonumber(f[7]), tonumber(f[8]), id))
      move('running', 'queued')
      requeued = requeued + 1
      out[#out + 1] = { id, f[2] or '', 'queued' }
    end
  end
end
stat('fail', now, failed)
signal(requeued)
flush_counts()
return out
