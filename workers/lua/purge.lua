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
--          (succeeded jobs are read from the list `done` in the order they finished, the
--          others from their zset by finish time)
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

-- Deletes the job `id` (its record `v`) with its unique key and its `all` entry.
local function delete(id, jk, v)
  local unique = v and rec_field(v, 'unique_key')
  if unique and redis.call('HGET', K .. 'unique', unique) == id then
    redis.call('HDEL', K .. 'unique', unique)
  end
  redis.call('DEL', jk, d_key(id))
  redis.call('ZREM', K .. 'all', id)
  out[#out + 1] = id
end

-- How many ids the next read may take: what the call may still delete, within its budget.
local function next_want()
  local want = limit - #out
  if want > budget then
    want = budget
  end
  return want
end

-- Whether the job (its record `v`) is a chain step whose next step still exists: kept.
local function kept(v)
  local nxt = v and rec_field(v, 'chain_next')
  return nxt and nxt ~= '' and redis.call('EXISTS', job_key(nxt)) == 1
end

if st == 'succeeded' then
  -- `done` is a list in finish order, oldest first (see common.lua): read from its head until
  -- a job that finished at `before` or later. Entries deleted are overwritten in place with
  -- a mark, then all removed with one LREM from the head.
  local MARK = '~'
  local marked = 0
  local reached = false
  while not reached do
    local want = next_want()
    if want <= 0 then
      break
    end
    local ids = redis.call('LRANGE', K .. 'done', skip, skip + want - 1)
    budget = budget - #ids
    local at = skip
    for i = 1, #ids do
      local id = ids[i]
      local jk = job_key(id)
      local v = rec_raw(id)
      local j = v and rec_read(v)
      if j and j.state == 'succeeded' and (tonumber(j.finished_at) or 0) >= tonumber(before) then
        reached = true
        break
      end
      if j and j.state == 'succeeded' and kept(v) then
        skip = skip + 1
      else
        -- A job that finished before `before`, or an entry that is no longer a succeeded
        -- job's (its job retried... or gone): the entry goes, and a succeeded job with it.
        if j and j.state == 'succeeded' then
          delete(id, jk, v)
          move(st, nil)
        end
        redis.call('LSET', K .. 'done', at, MARK)
        marked = marked + 1
      end
      at = at + 1
    end
    -- Entries after the marks shift down once the marks go: removed now, before reading on.
    if marked > 0 then
      redis.call('LREM', K .. 'done', marked, MARK)
      marked = 0
    end
    if not reached and #ids < want then
      done = 1
      break
    end
  end
  if reached then
    done = 1
  end
else
  while true do
    local want = next_want()
    if want <= 0 then
      break
    end
    local ids = redis.call('ZRANGEBYSCORE', K .. st, '-inf', '(' .. before, 'LIMIT', skip, want)
    budget = budget - #ids
    local gone = {}
    for i = 1, #ids do
      local id = ids[i]
      local jk = job_key(id)
      local v = rec_raw(id)
      if kept(v) then
        skip = skip + 1
      else
        delete(id, jk, v)
        move(st, nil)
        gone[#gone + 1] = id
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
end
flush_counts()
local reply = { skip, done }
for i = 1, #out do
  reply[#reply + 1] = out[i]
end
return reply
