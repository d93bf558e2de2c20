-- list.lua: one step of a newest-first listing of one queue's jobs (by id, which sorts by
-- creation time), optionally filtered by state and kind. It scans at most ARGV[5] ids, so a
-- sparse filter over a large queue takes several calls (the caller continues from the
-- returned position) instead of blocking Redis.
--
-- KEYS[1]  the queue's key prefix "{<prefix>:<queue>}:" (see common.lua)
-- ARGV[1]  start after this id ('' = from the newest)
-- ARGV[2]  state ('' = any)
-- ARGV[3]  kind ('' = any)
-- ARGV[4]  want: at most this many jobs
-- ARGV[5]  scan budget: at most this many ids looked at
-- Returns  {last id scanned ('' = none), more, exhausted, job, job, ...} where more is 1 when
--          another match exists after the jobs returned, exhausted is 1 when the scan reached
--          the oldest job, and each job is three entries: its id, its record and its d
--          (see common.lua).

local cursor, st, kind = ARGV[1], ARGV[2], ARGV[3]
local want = tonumber(ARGV[4])
local budget = tonumber(ARGV[5])
local max = '+'
if cursor ~= '' then
  max = '(' .. cursor
end
local ids = redis.call('ZREVRANGEBYLEX', K .. 'all', max, '-', 'LIMIT', 0, budget)
local jobs = {}
local last = cursor
local more = 0
for i = 1, #ids do
  local id = ids[i]
  local v = rec_raw(id)
  local keep = v ~= false and v ~= nil
  if keep and (st ~= '' or kind ~= '') then
    local vst, vkind = string.match(v, '^([^|]*)|[^\255]*\255([^\254]*)')
    keep = vst ~= nil and (st == '' or vst == st) and (kind == '' or vkind == kind)
  end
  if keep then
    if #jobs >= want * 3 then
      more = 1
      break
    end
    jobs[#jobs + 1] = id
    jobs[#jobs + 1] = v
    jobs[#jobs + 1] = redis.call('GET', d_key(id))
  end
  last = id
end
local exhausted = 0
if more == 0 and #ids < budget then
  exhausted = 1
end
local out = { last, more, exhausted }
for i = 1, #jobs do
  out[#out + 1] = jobs[i]
end
return out
