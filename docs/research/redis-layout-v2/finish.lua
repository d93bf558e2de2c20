local now = clock_ms(ARGV[1]); local now_s = ms_text(now); local cap = ARGV[2]; local n = tonumber(ARGV[3])
local out, keys, vals, ids, res = {}, {}, {}, {}, {}
for i = 0, n - 1 do
  local b = 4 + i * 5
  local id, token = ARGV[b], ARGV[b + 1]
  local jk = K .. 'job:' .. id
  local v = redis.call('GET', jk)
  local st, att, tok, lu, sa, fa, kind, rest = string.match(v, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$')
  if st ~= 'running' or tok ~= token then
    out[#out + 1] = 0
  else
    add_event('job.succeeded', id, kind, att, 'r', ARGV[b + 3])
    ids[#ids + 1] = id; keys[#keys + 1] = jk
    -- The result rides in the record (a real layout would length-prefix it): its copy is paid.
    vals[#vals + 1] = 'succeeded|' .. att .. '|' .. tok .. '|' .. lu .. '|' .. sa .. '|' .. now_s .. '|' .. kind .. '|' .. rest .. '|' .. ARGV[b + 3]
    res[#res + 1] = ARGV[b + 3]
    out[#out + 1] = 1
  end
end
if #ids > 0 then
  local ev = flush_events(cap, now)
  local succ = {}
  for i = 1, #ids do
    redis.call('SET', keys[i], vals[i] .. ' ' .. ev)
    succ[#succ + 1] = now_s; succ[#succ + 1] = ids[i]
  end
  redis.call('ZREM', K .. 'running', unpack(ids))
  redis.call('ZADD', K .. 'succeeded', unpack(succ))
  move('running', 'succeeded', #ids)
  local key = K .. 'stat:ok:' .. math.floor(now / 1000)
  redis.call('INCRBY', key, #ids)
  redis.call('EXPIRE', key, 120)
end
flush_counts()
return out
