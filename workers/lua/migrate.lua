-- migrate.lua: one step of rewriting a queue stored in layout 1 or 2 as layout 3 (see
-- common.lua), bounded so that Redis is never blocked for long. The caller
-- (`workers/src/broker/redis/layout.rs`) calls again with the returned cursor until it is ''.
-- Every step leaves what is in layout 3 already as it is, so a call repeated, or run by two
-- nodes at once, changes nothing twice.
--
-- KEYS[1]  the queue's key prefix "{<prefix>:<queue>}:" (see common.lua)
-- ARGV[1]  start after this id ('' = from the first; 'jobs' phase only)
-- ARGV[2]  batch size
-- ARGV[3]  'jobs': rewrites up to ARGV[2] jobs stored as hashes (layout 1) or as records with
--          `d` inside (layout 2) as a record and `d` each, in the order of the `all` index,
--          from after the id ARGV[1] on;
--          'done': moves up to ARGV[2] ids from the zset `succeeded`, oldest first, to the end
--          of the list `done`
-- Returns  {cursor, n}: where to go on ('' once the phase is done: for 'jobs' the last id
--          looked at, for 'done' 'more') and how many jobs or ids this call moved.

local limit = tonumber(ARGV[2])
if ARGV[3] == 'done' then
  local key = K .. 'succeeded'
  if redis.call('TYPE', key).ok ~= 'zset' then
    return { '', 0 }
  end
  local ids = redis.call('ZRANGE', key, 0, limit - 1)
  if #ids > 0 then
    redis.call('RPUSH', K .. 'done', unpack(ids))
    redis.call('ZREMRANGEBYRANK', key, 0, #ids - 1)
  end
  if #ids == limit then
    return { 'more', #ids }
  end
  return { '', #ids }
end

local min = '-'
if ARGV[1] ~= '' then
  min = '(' .. ARGV[1]
end
local ids = redis.call('ZRANGEBYLEX', K .. 'all', min, '+', 'LIMIT', 0, limit)
local rewritten = 0
for i = 1, #ids do
  local jk = job_key(ids[i])
  local t = redis.call('TYPE', jk).ok
  if t == 'hash' then
    rec_from_hash(ids[i])
    rewritten = rewritten + 1
  elseif t == 'string' then
    -- Layout 2: `d` inside the record, after the kind (a second 0xFF before any 0xFE).
    local v = redis.call('GET', jk)
    local p1 = string.find(v, '\255', 1, true)
    local p2 = p1 and string.find(v, '\255', p1 + 1, true)
    local pe = string.find(v, '\254', 1, true)
    if p2 and (not pe or p2 < pe) then
      local rest = ''
      if pe then
        rest = string.sub(v, pe)
      end
      redis.call('MSET', jk, string.sub(v, 1, p2 - 1) .. rest, d_key(ids[i]), string.sub(v, p2 + 1, (pe or #v + 1) - 1))
      rewritten = rewritten + 1
    end
  end
end
local cursor = ''
if #ids == limit then
  cursor = ids[#ids]
end
return { cursor, rewritten }
