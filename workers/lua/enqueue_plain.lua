-- enqueue_plain.lua: enqueue.lua for the usual batch, every job `queued` now with no unique
-- key, no chain and no delay: the same records, `d`s, lane entries, index, counts, event
-- entry and wake-ups as enqueue.lua writes for such jobs, for a quarter fewer Redis
-- instructions a job (callgrind, docs/research/redis-layout-v2/measure.sh: 40.8k against
-- 54.0k), half of it from taking 5 arguments a job instead of 10 and half from skipping the
-- bookkeeping of unique keys and chains. The caller (workers/src/broker/redis/lifecycle.rs)
-- picks this script for a call whose jobs are all plain, enqueue.lua for any other.
--
-- KEYS[1]  the queue's key prefix "{<prefix>:<queue>}:" (see common.lua)
-- ARGV[1]  now, ms, or '' for Redis' clock (see common.lua)
-- ARGV[2]  event stream cap
-- ARGV[3]  n, the number of jobs (at most 500); then 5 values per job: id, kind, head (as
--          enqueue.lua's), priority, payload JSON
-- Returns  {now}: every job was created, at that time (ms text). {} when one of the ids names
--          a stored job: nothing was written, and the caller sends the call to enqueue.lua,
--          which answers such a job as it is.

local now = clock_ms(ARGV[1])
local now_s = ms_text(now)
local cap = ARGV[2]
local n = tonumber(ARGV[3])
if n == 0 then
  return { now_s }
end

local jks = {}
for i = 1, n do
  jks[i] = job_key(ARGV[i * 5 - 1])
end
if redis.call('EXISTS', unpack(jks)) > 0 then
  return {}
end
for i = 1, n do
  local b = i * 5 - 1
  add_event('job.enqueued', ARGV[b], ARGV[b + 1], '0')
end
local ev = flush_events(cap, now)
local last_seq = redis.call('INCRBY', K .. 'seq', ARGV[3])
local mset, all, lanes = {}, {}, new_lanes()
local ev_bar = ev .. '|'
local now_pad = string.format('%015d', now < 0 and 0 or now)
for i = 1, n do
  local b = i * 5 - 1
  local id = ARGV[b]
  local seq_s = seq_text(last_seq - n + i)
  mset[4 * i - 3] = jks[i]
  mset[4 * i - 2] = rec_new('queued', now_s, seq_s, ARGV[b + 1])
  mset[4 * i - 1] = d_key(id)
  mset[4 * i] = ev_bar .. ARGV[b + 2] .. now_s .. '|' .. ARGV[b + 4]
  all[2 * i - 1] = '0'
  all[2 * i] = id
  lane_add(lanes, ARGV[b + 3], now_pad .. seq_s .. id)
end
redis.call('MSET', unpack(mset))
redis.call('ZADD', K .. 'all', unpack(all))
lanes_push(lanes)
move(nil, 'queued', n)
signal(n)
flush_counts()
return { now_s }
