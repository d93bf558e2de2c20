-- common.lua: helpers prepended to every Hopper script (see `workers/src/broker/redis.rs`).
-- Not a script on its own: it only defines locals the scripts use.
--
-- KEYS[1] of every script is the queue's key prefix "{<prefix>:<queue>}:". Every key a script
-- touches is KEYS[1] .. suffix, so all of them share one hash tag and one Cluster slot:
--   job:<id>   hash, one per job (fields mirror `Job`, plus `seq`, `ev0`, `evn`); an optional
--              field is absent or '' when it has no value
--   all        zset, every job id at score 0 (lexicographic index, newest first by id)
--   queued     zset, score = priority, member = qmember(run_at, seq, id)
--   due        zset of scheduled and retrying ids, score = due time (ms)
--   running    zset of running ids, score = lease deadline (ms)
--   succeeded, dead, cancelled   zsets of finished ids, score = finished_at (ms)
--   counts     hash state -> number of jobs
--   events     stream of events, trimmed to about ARGV cap entries
--   signal     list of wake-up tokens, BLPOPed by idle workers
--   unique     hash unique_key -> id
--   seq        counter, enqueue order
--   stat:ok:<second>, stat:fail:<second>   per-second counters, expire after 120 s

local K = KEYS[1]

local function job_key(id)
  return K .. 'job:' .. id
end

-- Member of the `queued` zset. The score is the priority alone; members with one score sort
-- by bytes, so a fixed-width due time, then a fixed-width enqueue sequence, then the id give
-- "earliest due, then first enqueued" inside a level, with no limit from double precision.
local QPREFIX = 31
local function qmember(run_at, seq, id)
  if run_at < 0 then
    run_at = 0
  end
  return string.format('%015.0f%016.0f', run_at, seq) .. id
end

-- State counts, summed per script and written with one HINCRBY per state at the end.
local counts = {}
local function move(from, to)
  if from then
    counts[from] = (counts[from] or 0) - 1
  end
  if to then
    counts[to] = (counts[to] or 0) + 1
  end
end
local function flush_counts()
  for st, d in pairs(counts) do
    if d ~= 0 then
      redis.call('HINCRBY', K .. 'counts', st, d)
    end
  end
end

-- Appends one event to the queue's stream (trimmed approximately to `cap`) and returns its id.
-- `extra` is a flat list of more field/value pairs: p (progress), m (message), r (result
-- JSON), e (error).
local function event(cap, typ, id, kind, at, attempt, extra)
  local args = { K .. 'events', 'MAXLEN', '~', cap, '*', 't', typ, 'j', id, 'k', kind, 'at', at, 'a', attempt }
  if extra then
    for i = 1, #extra do
      args[#args + 1] = extra[i]
    end
  end
  return redis.call('XADD', unpack(args))
end

-- Wakes up to `n` (at most 8) workers blocked on this queue. The list is trimmed so that it
-- stays a handful of tokens when nobody is waiting; a leftover token only causes one spurious
-- (harmless) wake-up.
local function signal(n)
  if n <= 0 then
    return
  end
  if n > 8 then
    n = 8
  end
  local toks = {}
  for i = 1, n do
    toks[i] = '1'
  end
  redis.call('LPUSH', K .. 'signal', unpack(toks))
  redis.call('LTRIM', K .. 'signal', 0, 15)
end

-- Counts succeeded / failed attempts in per-second buckets for "last minute" numbers.
local function stat(name, now, n)
  if n > 0 then
    local key = K .. 'stat:' .. name .. ':' .. math.floor(now / 1000)
    redis.call('INCRBY', key, n)
    redis.call('EXPIRE', key, 120)
  end
end

-- A finished (dead or cancelled) job back to `queued` with a fresh set of retries, behind
-- the jobs already queued at its priority; `job.enqueued` with message "retried". The last
-- error is kept. Used by retry.lua and retry_all_dead.lua.
local function requeue(id, st, now, cap)
  local jk = job_key(id)
  local f = redis.call('HMGET', jk, 'kind', 'priority')
  local seq = redis.call('INCR', K .. 'seq')
  redis.call('ZREM', K .. st, id)
  local ev = event(cap, 'job.enqueued', id, f[1], now, 0, { 'm', 'retried' })
  redis.call('HSET', jk, 'state', 'queued', 'attempt', 0, 'run_at', now, 'seq', seq,
    'interruption_streak', 0, 'progress', 0, 'evn', ev)
  redis.call('HDEL', jk, 'finished_at', 'lease_until', 'result', 'progress_message')
  redis.call('ZADD', K .. 'queued', f[2], qmember(now, seq, id))
  move(st, 'queued')
end

-- ---------------------------------------------------------------------------------------
