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
--          than now (ms text) or '', then one
--          string per leased job: the job's hash's fields and values as HGETALL read them
--          before the lease, followed by its id, joined by the byte 0xFF (JOINER below). The caller
--          applies the lease (`Job::begin_attempt` in workers/src/job.rs, the rule this
--          script stores) with the time and deadline given here: the script's clock may be
--          Redis', which the caller cannot read. Returning what HGETALL read, with the time
--          once per call, keeps the script from building or echoing per-job fields: echoing
--          the 7 changed fields of every job cost 12% of drain throughput. The earliest due
--          time lets an idle worker block on the signal list straight away (see
--          workers/src/broker/redis/due_hint.rs): no TIME and ZRANGE round trips of its own.
--          A job is one string, not an array of a dozen: Redis converts each reply value
--          out of Lua and the client parses each, and the one string cut fetch.lua's Redis
--          instructions by 8% a job (callgrind, docs/research/redis-layout-v2/measure.sh).

-- The byte joining a fetched job's parts: no UTF-8 text holds it, and every value Hopper
-- stores is UTF-8 (the client refuses a job that does not split into field/value pairs).
local JOINER = '\255'
local concat = table.concat

local now = clock_ms(ARGV[1])
local now_s = ms_text(now)
local max = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
local cap = ARGV[4]
local promote = tonumber(ARGV[5])
local deadline = ms_text(now + lease)

local due = redis.call('ZRANGEBYSCORE', K .. 'due', '-inf', now, 'LIMIT', 0, promote)
for i = 1, #due do
  local id = due[i]
  local jk = job_key(id)
  local f = redis.call('HMGET', jk, 'state', 'd', 'run_at', 'seq')
  if f[1] == 'scheduled' or f[1] == 'retrying' then
    redis.call('ZADD', K .. 'queued', d_priority(f[2]), qmember(tonumber(f[3]), tonumber(f[4]), id))
    redis.call('HSET', jk, 'state', 'queued')
    move(f[1], 'queued')
  end
end
if #due > 0 then
  redis.call('ZREM', K .. 'due', unpack(due))
end

-- The time, deadline and earliest due job first (and the rate's answer, rated); then the jobs.
local next_due = redis.call('ZRANGE', K .. 'due', 0, 0, 'WITHSCORES')
local out = { now_s, deadline, '' }
if next_due[2] then
  out[3] = ms_text(tonumber(next_due[2]) - now)
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
-- Per leased job: its id, the hash read, attempt and lease token before the lease, whether
-- it has progress to clear, whether it has started before (`started_at` is the first), and
-- the stream ids of its later events.
local ids, keys, attempts, tokens, clear, started, evss = {}, {}, {}, {}, {}, {}, {}
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
  for i = 1, #popped do
    local id = string.sub(popped[i], QPREFIX + 1)
    local jk = job_key(id)
    local f = redis.call('HGETALL', jk)
    local st, attempt, token, kind, prog, began, evs, seq
    for j = 1, #f, 2 do
      local k = f[j]
      if k == 'state' then
        st = f[j + 1]
      elseif k == 'seq' then
        seq = f[j + 1]
      elseif k == 'attempt' then
        attempt = f[j + 1]
      elseif k == 'lease_token' then
        token = f[j + 1]
      elseif k == 'kind' then
        kind = f[j + 1]
      elseif k == 'progress' or k == 'progress_message' then
        prog = true
      elseif k == 'started_at' then
        began = true
      elseif k == 'evs' then
        evs = f[j + 1]
      end
    end
    if st == 'queued' and tonumber(seq) == tonumber(string.sub(popped[i], 16, QPREFIX)) then
      local n = #ids + 1
      attempt = itoa((tonumber(attempt) or 0) + 1)
      token = itoa((tonumber(token) or 0) + 1)
      add_event('job.started', id, kind, attempt)
      ids[n] = id
      keys[n] = jk
      attempts[n] = attempt
      tokens[n] = token
      clear[n] = prog
      started[n] = began
      evss[n] = evs
      f[#f + 1] = id
      out[n + head] = concat(f, JOINER)
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
  for i = 1, #ids do
    local id, jk = ids[i], keys[i]
    if started[i] then
      redis.call('HSET', jk, 'state', 'running', 'attempt', attempts[i], 'lease_token', tokens[i],
        'lease_until', deadline, 'evs', evs_add(evss[i], ev))
    else
      redis.call('HSET', jk, 'state', 'running', 'attempt', attempts[i], 'lease_token', tokens[i],
        'lease_until', deadline, 'started_at', now_s, 'evs', evs_add(evss[i], ev))
    end
    if clear[i] then
      redis.call('HDEL', jk, 'progress', 'progress_message')
    end
    running[#running + 1] = deadline
    running[#running + 1] = id
  end
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
-- Nothing left queued and nothing scheduled: the wake-up tokens left (an enqueue of n jobs
-- pushes up to 8) would only wake workers to find nothing, each a fetch and a BLPOP more.
-- Whatever is queued or scheduled later pushes its own.
if drained and not next_due[2] then
  redis.call('DEL', K .. 'signal')
end
flush_counts()
return out
