-- enqueue.lua: stores new jobs of one queue, each `queued`, `scheduled` (run_at in the
-- future) or `waiting` (a chain step after the first), and appends `job.enqueued` for each,
-- all in one stream entry.
--
-- KEYS[1]  the queue's key prefix "{<prefix>:<queue>}:" (see common.lua)
-- ARGV[1]  now, ms, or '' for Redis' clock (see common.lua)
-- ARGV[2]  event stream cap
-- ARGV[3]  n, the number of jobs (at most 500, but a chain is never split across calls:
--          a call may run over by the rest of one); then 10 values per job:
--          id, kind, head ("<priority>|<max_retries>|<timeout_ms or ''>|": the job's field
--          `d` up to its creation time, see common.lua), priority, delay (ms until the job may
--          run, as the caller's clock reckoned it from its `run_at`; '' or <= 0 = now),
--          unique_key ('' = none), chain_id ('' = not a chain step), chain_index, chain_next
--          ('' = none), payload JSON
-- Returns  a flat array, two entries per job in order: the id (the existing job's id when
--          the unique key or the id was taken), then 1 if created or 0 if not; then the
--          time the jobs were created at, ms (their `created_at`, and `run_at` unless later).

local now = clock_ms(ARGV[1])
local now_s = ms_text(now)
local cap = ARGV[2]
local n = tonumber(ARGV[3])

local out = {}
-- ARGV base, state and due time of each job to create.
local bases, created_keys, states, ats = {}, {}, {}, {}
local taken_ids, taken_keys = {}, {}
-- Chains whose first step exists already (its unique key is taken), by chain id: the whole
-- chain is that earlier one, and none of its steps is created again.
local existing_chains = {}
-- Whether any id of the call names a stored job: one EXISTS over all of them, so that the
-- usual call (fresh ids) does not pay a command per job (a per-job EXISTS was 3% of a job's
-- Redis work, counted with callgrind over a simulated drain).
-- The job keys, made once for the EXISTS and the SETs.
local any_taken = false
local jks = {}
if n > 0 then
  for i = 0, n - 1 do
    jks[i + 1] = job_key(ARGV[4 + i * 10])
  end
  any_taken = redis.call('EXISTS', unpack(jks)) > 0
end
for i = 0, n - 1 do
  local b = 4 + i * 10
  local id, unique = ARGV[b], ARGV[b + 5]
  local chain_id, chain_index = ARGV[b + 6], tonumber(ARGV[b + 7]) or 0
  local existing = nil
  if chain_id ~= '' and existing_chains[chain_id] then
    -- The existing chain's step at this index.
    local step, seen = existing_chains[chain_id], {}
    for _ = 1, chain_index do
      if not step or seen[step] then
        step = nil
        break
      end
      seen[step] = true
      local v = rec_raw(step)
      local nxt = v and rec_field(v, 'chain_next')
      if nxt and nxt ~= '' then
        step = nxt
      else
        step = nil
      end
    end
    existing = step or id
  elseif unique ~= '' then
    local other = taken_keys[unique] or redis.call('HGET', K .. 'unique', unique)
    if other and (taken_keys[unique] or redis.call('EXISTS', job_key(other)) == 1) then
      existing = other
    end
  end
  if not existing and (taken_ids[id] or (any_taken and redis.call('EXISTS', job_key(id)) == 1)) then
    existing = id
  end
  if existing and chain_id ~= '' and chain_index == 0 then
    existing_chains[chain_id] = existing
  end
  if existing then
    out[#out + 1] = existing
    out[#out + 1] = 0
  else
    -- A run time in the past is simply now: it does not jump the line.
    local at, state = now, 'queued'
    -- A delay, not a time: counted from this script's clock (Redis'), so a caller whose
    -- clock is off does not shift the job by its error.
    local delay = tonumber(ARGV[b + 4]) or 0
    if chain_id ~= '' and chain_index > 0 then
      -- A later chain step runs when the step before it succeeds, not at a time.
      state = 'waiting'
    elseif delay > 0 then
      at = now + delay
      state = 'scheduled'
    end
    taken_ids[id] = true
    if unique ~= '' then
      taken_keys[unique] = id
    end
    bases[#bases + 1] = b
    created_keys[#created_keys + 1] = jks[i + 1]
    states[#states + 1] = state
    ats[#ats + 1] = at
    add_event('job.enqueued', id, ARGV[b + 1], '0')
    out[#out + 1] = id
    out[#out + 1] = 1
  end
end

if #bases > 0 then
  local ev = flush_events(cap, now)
  local last_seq = redis.call('INCRBY', K .. 'seq', itoa(#bases))
  -- Queued jobs by priority (text), in enqueue order, for their lanes (see common.lua).
  local all, lanes, nqueued, due, unique = {}, new_lanes(), 0, {}, {}
  -- Every job's record and `d`, written with one MSET: a SET per key cost a call each.
  local mset = {}
  local ev_bar = ev .. '|'
  -- A lane entry's due time is the call's now: its fixed-width text (qmember's) made once.
  local now_pad = string.format('%015d', now < 0 and 0 or now)
  for i = 1, #bases do
    local b, state, at = bases[i], states[i], ats[i]
    local id, priority = ARGV[b], ARGV[b + 3]
    local seq = last_seq - #bases + i
    -- Numbers go to redis.call as text made here: Redis would print each with '%.17g'.
    local at_s = at == now and now_s or ms_text(at)
    -- The record (see common.lua): no attempt, lease or finish yet, no interruption, no
    -- event after the first (whose entry leads `d`), and only the optional fields it has.
    local seq_s = seq_text(seq)
    local rec = rec_new(state, at_s, seq_s, ARGV[b + 1])
    if ARGV[b + 5] ~= '' then
      rec = rec .. '\254unique_key\255' .. ARGV[b + 5]
      unique[#unique + 1] = ARGV[b + 5]
      unique[#unique + 1] = id
    end
    if ARGV[b + 6] ~= '' then
      rec = rec .. '\254chain_id\255' .. ARGV[b + 6] .. '\254chain_index\255' .. ARGV[b + 7]
      if ARGV[b + 8] ~= '' then
        rec = rec .. '\254chain_next\255' .. ARGV[b + 8]
      end
    end
    local n = #mset
    mset[n + 1] = created_keys[i]
    mset[n + 2] = rec
    mset[n + 3] = d_key(id)
    mset[n + 4] = ev_bar .. ARGV[b + 2] .. now_s .. '|' .. ARGV[b + 9]
    all[#all + 1] = '0'
    all[#all + 1] = id
    if state == 'queued' then
      lane_add(lanes, priority, now_pad .. seq_s .. id)
      nqueued = nqueued + 1
    elseif state == 'scheduled' then
      due[#due + 1] = at_s
      due[#due + 1] = id
    end
    move(nil, state)
  end
  redis.call('MSET', unpack(mset))
  redis.call('ZADD', K .. 'all', unpack(all))
  lanes_push(lanes)
  if #due > 0 then
    redis.call('ZADD', K .. 'due', unpack(due))
  end
  if #unique > 0 then
    redis.call('HSET', K .. 'unique', unpack(unique))
  end
  -- Scheduled jobs wake waiters too, so that they shorten their wait to the new due time.
  signal(nqueued + #due / 2)
end
flush_counts()
out[#out + 1] = now_s
return out
