local now = clock_ms(ARGV[1]); local now_s = ms_text(now); local max = tonumber(ARGV[2])
local lease = tonumber(ARGV[3]); local cap = ARGV[4]
local deadline = ms_text(now + lease)
local due = redis.call('ZRANGEBYSCORE', K .. 'due', '-inf', now, 'LIMIT', 0, 100)
local next_due = redis.call('ZRANGE', K .. 'due', 0, 0, 'WITHSCORES')
local out = { now_s, deadline, '' }
if redis.call('EXISTS', K .. 'paused') == 1 then return out end
local lanes = redis.call('ZRANGE', K .. 'lanes', 0, -1)
local items = redis.call('LRANGE', K .. 'lane:5', 0, max - 1)
redis.call('LTRIM', K .. 'lane:5', #items, -1)
local ids, keys, vals = {}, {}, {}
for i = 1, #items do
  local id = string.sub(items[i], 32)
  local jk = K .. 'job:' .. id
  local v = redis.call('GET', jk)
  local st, att, tok, lu, sa, fa, kind, seq, rest = string.match(v, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$')
  if st == 'queued' then
    local a = tonumber(att) + 1
    local t = tonumber(tok) + 1
    add_event('job.started', id, kind, a)
    ids[#ids + 1] = id; keys[#keys + 1] = jk
    if sa == '' then sa = now_s end
    vals[#vals + 1] = 'running|' .. a .. '|' .. t .. '|' .. deadline .. '|' .. sa .. '|' .. fa .. '|' .. kind .. '|' .. seq .. '|' .. rest
  end
end
if #ids > 0 then
  local ev = flush_events(cap, now)
  local running = {}
  for i = 1, #ids do
    local v = vals[i] .. ' ' .. ev
    redis.call('SET', keys[i], v)
    running[#running + 1] = deadline; running[#running + 1] = ids[i]
    out[#out + 1] = v
  end
  redis.call('ZADD', K .. 'running', unpack(running))
  move('queued', 'running', #ids)
end
flush_counts()
return out
