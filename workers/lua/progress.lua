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

-- The most entries a job's `evs` lists before its progress entries replace each other.
local MAX_EVS = 64

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
-- Past MAX_EVS entries in `evs` (which every call on the job reads and writes back, with the
-- whole record), a progress entry replaces the job's last entry when that is a progress entry
-- too (or trimmed from the stream already): a job reporting for hours keeps a record of a
-- bounded size, and its history the first entries, then the latest progress between two
-- other events. The stream itself keeps every update for live readers.
local evs = j.evs
if evs ~= '' then
  local _, spaces = string.gsub(evs, ' ', ' ')
  if spaces + 1 >= MAX_EVS then
    local last = string.match(evs, '([^ ]+)$')
    local e = redis.call('XRANGE', K .. 'events', last, last)
    local f = e[1] and e[1][2]
    if not f or (f[3] == 't' and f[4] == 'job.progress' and f[6] == id) then
      evs = string.sub(evs, 1, #evs - #last - 1)
    end
  end
end
j.evs = evs_add(evs, ev)
j.x.progress = percent
if ARGV[6] == '1' then
  j.x.progress_message = ARGV[7]
else
  j.x.progress_message = nil
end
rec_write(id, j)
return 1
