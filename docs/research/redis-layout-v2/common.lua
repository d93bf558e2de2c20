local K = KEYS[1]
local ARGV, redis, string, tonumber, tostring, unpack = ARGV, redis, string, tonumber, tostring, unpack
local function clock_ms(arg)
  if arg and arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function ms_text(n) return string.format('%d', n) end
local counts = {}
local function move(from, to, n)
  n = n or 1
  if from then counts[from] = (counts[from] or 0) - n end
  if to then counts[to] = (counts[to] or 0) + n end
end
local function flush_counts()
  for st, d in pairs(counts) do
    if d ~= 0 then redis.call('HINCRBY', K .. 'counts', st, d) end
  end
end
local evbuf = {}
local function add_event(typ, id, kind, attempt, xk, xv)
  local n = #evbuf
  evbuf[n + 1] = 'v'
  evbuf[n + 2] = typ .. ' ' .. attempt .. ' ' .. id .. ' ' .. kind
  if xk then evbuf[n + 3] = xk; evbuf[n + 4] = xv end
end
local function flush_events(cap, at)
  if #evbuf == 0 then return nil end
  local id = redis.call('XADD', K .. 'events', 'MAXLEN', '~', cap, '*', 'at', ms_text(at), unpack(evbuf))
  evbuf = {}
  return id
end
-- packed job: state|attempt|token|lease_until|started_at|finished_at|evs|kind|seq|d  (d = ev0|prio|maxr|timeout|created|payload)
-- result and errors in separate keys (res:<id>) not needed for the hot path prototype
local PAT = '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$'
