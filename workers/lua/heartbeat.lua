-- heartbeat.lua: extends the leases of running jobs of one queue.
--
-- KEYS[1]  the queue's key prefix "{<prefix>:<queue>}:" (see common.lua)
-- ARGV[1]  now, ms, or '' for Redis' clock (see common.lua)
-- ARGV[2]  lease length, ms
-- ARGV[3]  n; then 2 values per lease: id, lease token
-- Returns  an array of n integers: 1 held (extended to now + lease), 2 cancelled by a user
--          (same token, state cancelled), 0 lost (another attempt owns it, or it no longer
--          runs).

local now = clock_ms(ARGV[1])
local deadline = ms_text(now + tonumber(ARGV[2]))
local n = tonumber(ARGV[3])

local out = {}
for i = 0, n - 1 do
  local id, token = ARGV[4 + i * 2], ARGV[5 + i * 2]
  local j = rec_get(id)
  if not j or j.token ~= token then
    out[#out + 1] = 0
  elseif j.state == 'running' then
    redis.call('ZADD', K .. 'running', 'XX', deadline, id)
    j.lease_until = deadline
    rec_write(id, j)
    out[#out + 1] = 1
  elseif j.state == 'cancelled' then
    out[#out + 1] = 2
  else
    out[#out + 1] = 0
  end
end
return out
