-- inbox_append.lua: keeps one notification in its user's inbox, idempotent by its id, after
-- dropping the entries older than `keep` (see `workers/src/broker/redis/inbox.rs`).
--
-- KEYS[1]  the inbox's key prefix "{<prefix>:@inbox}:" (one slot for every inbox key:
--          `@` is not allowed in a queue name, so no queue shares it)
-- ARGV[1]  the notification's id
-- ARGV[2]  its user
-- ARGV[3]  its JSON body
-- ARGV[4]  keep, ms (at least 1)
-- Keys     log       stream of every user's entries (fields n = id, u = user, b = body)
--          u:<user>  stream of one user's entries, under the same stream ids (n, b); expires
--                    `keep` after its last append
--          id:<id>   string, the stream id of the entry with that id; expires with `keep`
-- Returns  {stream id, 1} appended, or {stream id of the kept entry, 0} when the id is kept.
-- Stream ids come from Redis' clock (`XADD *`), so trimming by `MINID` is by Redis' time.

local id, user, body = ARGV[1], ARGV[2], ARGV[3]
local keep = math.max(tonumber(ARGV[4]), 1)
local idkey = K .. 'id:' .. id
local log = K .. 'log'
local kept = redis.call('GET', idkey)
-- Kept while its entry is: one trimmed away (an append with a shorter keep) is appended anew.
if kept and #redis.call('XRANGE', log, kept, kept) > 0 then
  return {kept, 0}
end
local ukey = K .. 'u:' .. user
local cutoff = clock_ms('') - keep
if cutoff > 0 then
  redis.call('XTRIM', log, 'MINID', ms_text(cutoff))
  redis.call('XTRIM', ukey, 'MINID', ms_text(cutoff))
end
local sid = redis.call('XADD', log, '*', 'n', id, 'u', user, 'b', body)
redis.call('XADD', ukey, sid, 'n', id, 'b', body)
redis.call('PEXPIRE', ukey, keep)
redis.call('SET', idkey, sid, 'PX', keep)
return {sid, 1}
