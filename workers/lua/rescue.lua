-- rescue.lua: returns running jobs of one queue whose lease expired (deadline < now) to
-- `queued` at their old place in line (attempt - 1, interruptions + 1, streak + 1,
-- `job.interrupted`), or to `dead` (`job.interrupted`, then `job.dead`) once interrupted ARGV[3] times in a row (a
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
  redis.call('ZREM', K .. 'running', id)
  local j = rec_get(id)
  if j and j.state == 'running' then
    local run = tonumber(j.attempt) or 0
    local attempt = run - 1
    if attempt < 0 then
      attempt = 0
    end
    local interruptions = (tonumber(j.x.interruptions) or 0) + 1
    local streak = (tonumber(j.streak) or 0) + 1
    j.lease_until, j.attempt, j.streak = '', itoa(attempt), itoa(streak)
    j.x.interruptions = itoa(interruptions)
    if streak >= max_int then
      local err = 'poison pill: interrupted ' .. streak .. ' times in a row (its lease expired each time)'
      -- This interruption is counted like the others (its `job.interrupted`, naming the
      -- attempt cut short); `job.dead` then names the attempt as the job now stores it.
      local iev = event(cap, 'job.interrupted', id, j.kind, now, run, { 'm', 'lease expired' })
      local ev = event(cap, 'job.dead', id, j.kind, now, j.attempt, { 'e', err })
      j.state, j.finished_at, j.x.last_error = 'dead', ms_text(now), err
      j.evs = evs_add(evs_add(j.evs, iev), ev)
      rec_write(id, j)
      redis.call('ZADD', K .. 'dead', now, id)
      move('running', 'dead')
      failed = failed + 1
      out[#out + 1] = { id, j.kind, 'dead' }
      if j.x.chain_next and j.x.chain_next ~= '' then
        chain_cancel_rest(id, j.x.chain_index, j.x.chain_next, 'dead', now, cap)
      end
    else
      local ev = event(cap, 'job.interrupted', id, j.kind, now, run, { 'm', 'lease expired' })
      j.state, j.evs = 'queued', evs_add(j.evs, ev)
      rec_write(id, j)
      redis.call('ZADD', K .. 'queued', priority_of(id), qmember(tonumber(j.run_at), tonumber(j.seq), id))
      move('running', 'queued')
      requeued = requeued + 1
      out[#out + 1] = { id, j.kind, 'queued' }
    end
  end
end
stat('fail', now, failed)
signal(requeued)
flush_counts()
return out
