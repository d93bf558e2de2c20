-- purge.lua: deletes up to ARGV[2] jobs of one queue in the final state ARGV[3] that finished
-- before ARGV[1], with their unique keys. A chain step whose next step still exists is kept
-- (and skipped): a later step retried must find its predecessor, so a chain is purged from
-- its end (see the chain notes in `workers/src/broker/mod.rs`). Looks at most 4 x ARGV[2]
-- candidates per call; the caller calls again with the returned skip until done.
--
-- KEYS[1]  the queue's key prefix "{<prefix>:<queue>}:" (see common.lua)
-- ARGV[1]  before, ms (exclusive)
-- ARGV[2]  batch size: at most this many jobs deleted
-- ARGV[3]  state: 'succeeded', 'dead' or 'cancelled' (any other deletes nothing)
-- ARGV[4]  skip: how many candidates at the front of the state's range earlier calls kept
-- Returns  {skip, done, id, id, ...}: the skip to pass next (ARGV[4] plus the candidates kept
--          by this call), 1 when the range was read to its end (else 0), then the ids deleted
--          (the caller removes them from the global id -> queue index).

local before = ARGV[1]
local limit = tonumber(ARGV[2])
local st = ARGV[3]
local skip = tonumber(ARGV[4])
if st ~= 'succeeded' and st ~= 'dead' and st ~= 'cancelled' then
  return { skip, 1 }
end
local out = {}
local budget = limit * 4
local done = 0
while true do
  local want = limit - #out
  if want > budget then
    want = budget
  end
  if want <= 0 then
    break
  end
  local ids = redis.call('ZRANGEBYSCORE', K .. st, '-inf', '(' .. before, 'LIMIT', skip, want)
  budget = budget - #ids
  local gone = {}
  for i = 1, #ids do
    local id = ids[i]
    local jk = job_key(id)
    local v = rec_raw(jk)
    local f = { v and rec_field(v, 'unique_key'), v and rec_field(v, 'chain_next') }
    if f[2] and f[2] ~= '' and redis.call('EXISTS', job_key(f[2])) == 1 then
      skip = skip + 1
    else
      if f[1] and redis.call('HGET', K .. 'unique', f[1]) == id then
        redis.call('HDEL', K .. 'unique', f[1])
      end
      redis.call('DEL', jk)
      redis.call('ZREM', K .. 'all', id)
      move(st, nil)
      gone[#gone + 1] = id
      out[#out + 1] = id
    end
  end
  if #gone > 0 then
    redis.call('ZREM', K .. st, unpack(gone))
  end
  if #ids < want then
    done = 1
    break
  end
end
flush_counts()
local reply = { skip, done }
for i = 1, #out do
  reply[#reply + 1] = out[i]
end
return reply
