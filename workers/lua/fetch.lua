-- fetch.lua: promotes due jobs of one queue, then leases up to ARGV[2] jobs in priority
-- order (lowest priority number, earliest due, first enqueued): `queued -> running`,
-- attempt + 1, lease_token + 1, lease deadline now + lease, `started_at` now on its first
-- start only; appends `job.started` for each, all in one stream entry.
--
-- KEYS[1]  the queue's key prefix "{<prefix>:<queue>}:" (see common.lua)
-- ARGV[1]  now, ms, or '' for Redis' clock (see common.lua)
-- ARGV[2]  max jobs to lease (at most 500: the events of one call go in one XADD)
-- ARGV[3]  lease length, ms
-- ARGV[4]  event stream cap
-- ARGV[5]  at most this many due jobs are promoted per call (bounds the work per call; the
--          rest are promoted by the next fetches)
-- ARGV[6]  (rated fetch only) ms between two starts of the queue's job rate (a float)
-- ARGV[7]  (rated fetch only) the rate's tolerance, ms (see workers/src/broker/rate.rs)
-- A paused queue (its `paused` key set, see common.lua) has its due jobs promoted but leases
-- none: the answer is the time, deadline and earliest due alone (and, rated, the fourth entry).
-- A rated fetch leases no more jobs than the queue's rate allows now, by GCRA on the key
-- `rate` (the earliest time the next job may start, ms, a float; the rule is
-- workers/src/broker/rate.rs's), and advances that key by the jobs it leased. An unrated
-- fetch neither reads nor writes it.
--
-- Returns  an array: the time this call ran at (ms), the lease deadline it wrote, how long
--          until the queue's earliest due job (ms text, <= 0 when one is due already) or ''
--          when none is scheduled, (rated only) when the rate next allows a start if later
--          than now (ms text) or '', then three values per leased job: its id, its record
--          (see common.lua) as read before the lease, and its `d`. The caller
--          applies the lease (`Job::begin_attempt` in workers/src/job.rs, the rule this
--          script stores) with the time and deadline given here: the script's clock may be
--          Redis', which the caller cannot read. Returning the record as read, with the time
--          once per call, keeps the script from building or echoing per-job fields: echoing
--          the 7 changed fields of every job cost 12% of drain throughput. The earliest due
--          time lets an idle worker block on the signal list straight away (see
--          workers/src/broker/redis/due_hint.rs): no TIME and ZRANGE round trips of its own.
--          A job is its record as stored, not an array of a dozen values (Redis converts each
--          reply value out of Lua and the client parses each), and its id a value of its own:
--          joining the two into one string cost 2% more of fetch.lua's Redis instructions
--          than the value (callgrind, docs/research/redis-layout-v2/measure.sh).

-- A record's `h` parts and the position after them (see common.lua). The pattern stops there:
-- the rest (the payload) is cut with string.sub, never scanned a byte at a time.
local FETCH_PAT = '^([^|]*)|([^|]*)|([^|]*)|[^|]*|([^|]*)|([^|]*|([^|]*)|[^|]*|[^|]*|)([^|\255]*)()'

local now = clock_ms(ARGV[1])
local now_s = ms_text(now)
local max = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
local cap = ARGV[4]
local deadline = ms_text(now + lease)

-- The due set's head, read once for both of its uses: the jobs due now to promote (at most
-- ARGV[5]), and the earliest due job left after them. One read, not two: a redis.call costs
-- ~8k Redis instructions whatever it does (callgrind, docs/research/redis-layout-v2).
local promote = tonumber(ARGV[5])
local due_head = redis.call('ZRANGE', K .. 'due', '-inf', '+inf', 'BYSCORE', 'LIMIT', '0', itoa(promote + 1), 'WITHSCORES')
local due, next_at = {}, nil
for i = 1, #due_head, 2 do
  local at = tonumber(due_head[i + 1])
  if at <= now and #due < promote then
    due[#due + 1] = due_head[i]
  else
    next_at = at
    break
  end
end
for i = 1, #due do
  local id = due[i]
  local j = rec_get(id)
  if j and (j.state == 'scheduled' or j.state == 'retrying') then
    redis.call('ZADD', K .. 'queued', priority_of(id), qmember(tonumber(j.run_at), tonumber(j.seq), id))
    move(j.state, 'queued')
    j.state = 'queued'
    rec_write(id, j)
  end
end
if #due > 0 then
  redis.call('ZREM', K .. 'due', unpack(due))
end

-- The time, deadline and earliest due job first (and the rate's answer, rated); then the jobs.
local out = { now_s, deadline, '' }
if next_at then
  out[3] = ms_text(next_at - now)
end
local interval = ARGV[6] and tonumber(ARGV[6])
local rate_from
if interval then
  out[4] = ''
  rate_from = now - tonumber(ARGV[7])
  local stored = redis.call('GET', K .. 'rate')
  if stored and tonumber(stored) > rate_from then
    rate_from = tonumber(stored)
  end
end
local head = #out
-- A paused queue leases nothing. Its due jobs were promoted above all the same, so that they
-- wait as `queued` and a worker's wait_for_work does not keep finding them due.
if redis.call('EXISTS', K .. 'paused') == 1 then
  -- The promotions above are counted all the same.
  flush_counts()
  return out
end
if max > 500 then
  max = 500
end
if interval then
  local allowed = 0
  if rate_from <= now then
    allowed = math.floor((now - rate_from) / interval) + 1
  end
  if allowed < max then
    max = allowed
  end
end
-- Per leased job: its id, its key, its new `h` up to its `evs`, the `evs` it had, and the
-- record after `h`, without its progress.
local ids, keys, heads, evss, tails = {}, {}, {}, {}, {}
-- An entry is the job's only while the job is `queued` under the entry's sequence: a lane
-- keeps the entries of cancelled jobs (see common.lua). Entries taken and skipped are made
-- up for by taking more, a bounded number of times.
local rounds = 0
-- Whether this call took every queued entry there was.
local drained = false
while max > 0 and #ids < max and rounds < 8 do
  rounds = rounds + 1
  local need = max - #ids
  local popped = take_queued(need)
  if #popped < need then
    drained = true
  end
  local stale = false
  -- The records of the entries taken and their `d`s, read with one MGET (an entry skipped
  -- reads its `d` for nothing, which is rare; a second MGET for the leased ones' cost more).
  local np = #popped
  local pids, pkeys = {}, {}
  for i = 1, np do
    local id = string.sub(popped[i], QPREFIX + 1)
    pids[i] = id
    pkeys[i] = job_key(id)
    pkeys[np + i] = d_key(id)
  end
  local vs = {}
  if np > 0 then
    vs = rec_many(pids, pkeys, np)
  end
  for i = 1, np do
    local id, jk, v = pids[i], pkeys[i], vs[i]
    -- mid: `h` from run_at to the streak, the part a lease does not change.
    local st, attempt, token, started_at, mid, seq, evs, at
    if v then
      st, attempt, token, started_at, mid, seq, evs, at = string.match(v, FETCH_PAT)
    end
    -- The sequences compared as numbers only when their texts differ: an entry that is no
    -- longer the job's (rare), or a record written before sequences had 16 digits.
    local mseq = string.sub(popped[i], 16, QPREFIX)
    if st == 'queued' and (seq == mseq or tonumber(seq) == tonumber(mseq)) then
      local n = #ids + 1
      attempt = succ(attempt)
      token = succ(token)
      if started_at == '' then
        started_at = now_s
      end
      -- The record from the 0xFF after `h` on: its kind, then the optional fields.
      local tail = string.sub(v, at)
      add_event('job.started', id, string.match(tail, '^\255([^\254]*)'), attempt)
      ids[n] = id
      keys[n] = jk
      heads[n] = 'running|' .. attempt .. '|' .. token .. '|' .. deadline .. '|' .. started_at .. '|' .. mid
      evss[n] = evs
      -- A new attempt starts without the last one's progress.
      if string.find(tail, '\254progress', 1, true) then
        tail = string.gsub(tail, '\254progress[^\254]*', '')
      end
      tails[n] = tail
      out[3 * n - 2 + head] = id
      out[3 * n - 1 + head] = v
      -- A job rewritten from a hash by rec_many had no `d` when the MGET read it.
      out[3 * n + head] = vs[np + i] or redis.call('GET', d_key(id))
    else
      stale = true
    end
  end
  if not stale or #popped < need then
    break
  end
end
if #ids > 0 then
  local ev = flush_events(cap, now)
  local running = { '+inf', RUNNING_PIN }
  -- The new records, written with one MSET.
  local mset = {}
  for i = 1, #ids do
    local id = ids[i]
    -- `evs` with this call's entry added (never there already: the entry is new).
    local evs = evss[i]
    mset[2 * i - 1] = keys[i]
    if evs == '' then
      mset[2 * i] = heads[i] .. ev .. tails[i]
    else
      mset[2 * i] = heads[i] .. evs .. ' ' .. ev .. tails[i]
    end
    running[#running + 1] = deadline
    running[#running + 1] = id
  end
  redis.call('MSET', unpack(mset))
  redis.call('ZADD', K .. 'running', unpack(running))
  move('queued', 'running', #ids)
end
if interval then
  local next_start = rate_from + interval * #ids
  if #ids > 0 then
    redis.call('SET', K .. 'rate', string.format('%.3f', next_start))
  end
  if next_start > now then
    out[4] = string.format('%.3f', next_start)
  end
end
-- Stopped skipping entries of cancelled jobs after its rounds, with fewer jobs leased than
-- asked and entries left: jobs may wait behind more of them. A wake-up token makes the
-- caller's wait return at once, so that the next fetch goes on skipping them; without it, a
-- job behind a thousand cancelled ones waited out one idle wait per call (~20 s in all).
if not drained and rounds >= 8 and #ids < max then
  signal(1)
end
-- Nothing left queued and nothing scheduled: the wake-up tokens left (an enqueue of n jobs
-- pushes up to 8) would only wake workers to find nothing, each a fetch and a BLPOP more.
-- Whatever is queued or scheduled later pushes its own.
if drained and not next_at then
  redis.call('DEL', K .. 'signal')
end
flush_counts()
return out
