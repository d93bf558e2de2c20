local now = clock_ms(ARGV[1]); local now_s = ms_text(now); local cap = ARGV[2]; local n = tonumber(ARGV[3])
local jks = {}
for i = 0, n - 1 do jks[i + 1] = K .. 'job:' .. ARGV[4 + i * 10] end
local any_taken = redis.call('EXISTS', unpack(jks)) > 0
local out = {}
for i = 0, n - 1 do
  local b = 4 + i * 10
  add_event('job.enqueued', ARGV[b], ARGV[b + 1], '0')
end
local ev = flush_events(cap, now)
local last_seq = redis.call('INCRBY', K .. 'seq', n)
local all, lane = {}, {}
local now_pad = string.format('%015d', now)
local pre = 'queued|0|0||||||'
for i = 0, n - 1 do
  local b = 4 + i * 10
  local id = ARGV[b]
  local seq = last_seq - n + i + 1
  redis.call('SET', jks[i + 1], 'queued|0|0||||' .. ARGV[b + 1] .. '|' .. seq .. '|' .. ev .. '|' .. ARGV[b + 2] .. now_s .. '|' .. ARGV[b + 9])
  all[#all + 1] = '0'; all[#all + 1] = id
  lane[#lane + 1] = now_pad .. string.format('%016d', seq) .. id
  out[#out + 1] = id; out[#out + 1] = 1
end
redis.call('ZADD', K .. 'all', unpack(all))
redis.call('RPUSH', K .. 'lane:5', unpack(lane))
redis.call('ZADD', K .. 'lanes', 5, 5)
move(nil, 'queued', n)
redis.call('LPUSH', K .. 'signal', 1, 1, 1, 1, 1, 1, 1, 1)
redis.call('LTRIM', K .. 'signal', 0, 15)
flush_counts()
out[#out + 1] = now_s
return out
