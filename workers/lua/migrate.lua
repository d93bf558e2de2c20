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
    local f = redis.call('HGETALL', jk)
    local m = {}
    for k = 1, #f, 2 do
      m[f[k]] = f[k + 1]
    end
    local j = {
      state = m.state or '', attempt = m.attempt or '0', token = m.lease_token or '0',
      lease_until = m.lease_until or '', started_at = m.started_at or '', finished_at = m.finished_at or '',
      run_at = m.run_at or '', seq = seq_text(tonumber(m.seq) or 0), streak = m.interruption_streak or '0', evs = m.evs or '',
      kind = m.kind or '', d = m.d or '', x = {},
    }
    for _, name in ipairs(OPTIONAL) do
      j.x[name] = m[name]
    end
    redis.call('DEL', jk)
    rec_write(jk, j)
    rewritten = rewritten + 1
  end
end
local cursor = ''
if #ids == limit then
  cursor = ids[#ids]
end
return { cursor, rewritten }
