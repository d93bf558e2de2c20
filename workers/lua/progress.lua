-- progress.lua: records a running job's progress and appends `job.progress`.
--
-- KEYS[1]  the queue's key prefix "{<prefix>:<queue>}:" (see common.lua)
-- ARGV[1]  now, ms, or '' for Redis' clock (see common.lua)
-- ARGV[2]  event stream cap
-- ARGV[3]  id
-- ARGV[4]  lease token
-- ARGV[5]  percent, 0..100
-- ARGV[6]  '1' when a message follows, '0' to clear the message
-- ARGV[7]  message
-- Returns  1 recorded, 0 lease lost (not running under this token).

local now = clock_ms(ARGV[1])
local cap = ARGV[2]
local id, token, percent = ARGV[3], ARGV[4], ARGV[5]
local j = rec_get(id)
if not j or j.state ~= 'running' or j.token ~= token then
  return 0
end
local extra = { 'p', percent }
if ARGV[6] == '1' then
  extra[3] = 'm'
  extra[4] = ARGV[7]
end
local ev = event(cap, 'job.progress', id, j.kind, now, j.attempt, extra)
j.evs = evs_add(j.evs, ev)
j.x.progress = percent
if ARGV[6] == '1' then
  j.x.progress_message = ARGV[7]
else
  j.x.progress_message = nil
end
rec_write(id, j)
return 1
