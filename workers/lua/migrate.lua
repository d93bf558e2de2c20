-- migrate.lua: rewrites up to ARGV[2] jobs of one queue stored in layout 1 (a hash per job)
-- as layout 2 (one string per job, its record: see common.lua), in the order of the `all`
-- index, from after the id ARGV[1] on. A job stored as a string already is left as it is, so
-- a call repeated, or run by two nodes at once, changes nothing twice. The caller
-- (`workers/src/broker/redis/layout.rs`) calls again with the returned cursor until it is ''.
--
-- KEYS[1]  the queue's key prefix "{<prefix>:<queue>}:" (see common.lua)
-- ARGV[1]  start after this id ('' = from the first)
-- ARGV[2]  batch size
-- Returns  {cursor, rewritten}: the last id looked at ('' once the index was read to its
--          end) and how many jobs this call rewrote.

local min = '-'
if ARGV[1] ~= '' then
  min = '(' .. ARGV[1]
end
local limit = tonumber(ARGV[2])
local ids = redis.call('ZRANGEBYLEX', K .. 'all', min, '+', 'LIMIT', 0, limit)
local rewritten = 0
for i = 1, #ids do
  local jk = job_key(ids[i])
  if redis.call('TYPE', jk).ok == 'hash' then
    rec_from_hash(jk)
    rewritten = rewritten + 1
  end
end
local cursor = ''
if #ids == limit then
  cursor = ids[#ids]
end
return { cursor, rewritten }
