-- trimmed.lua: what a queue's event stream lost to trimming (its `MAXLEN ~` cap, see
-- common.lua), for workers/src/broker/redis/events.rs's `trimmed_after`: how many entries it
-- ever had, how many it holds, its first held entry's id and its last entry's id.
--
-- KEYS[1]  the queue's key prefix "{<prefix>:<queue>}:" (see common.lua)
-- Returns  {entries added, length, first held id or '', last generated id}, or {} when the
--          queue has no stream.

local info = redis.pcall('XINFO', 'STREAM', K .. 'events')
if type(info) ~= 'table' or info.err then
  return {}
end
local found = {}
for i = 1, #info - 1, 2 do
  found[info[i]] = info[i + 1]
end
local added, length = found['entries-added'], found['length']
if type(added) ~= 'number' or type(length) ~= 'number' then
  return {}
end
local first = ''
if length > 0 then
  first = found['recorded-first-entry-id'] or ''
end
return { itoa(added), itoa(length), first, found['last-generated-id'] or '' }
