"""The token-bucket Lua scripts of the Redis limiter: each reserve and settle one atomic script,
so N replicas sharing one Redis admit exactly the limit (DESIGN contract 3)."""

_BUCKETS = """
if redis.replicate_commands then redis.replicate_commands() end  -- TIME before writes on Redis < 5
local now, slack
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now, slack = tonumber(t[1]) * 1000000 + tonumber(t[2]), 1
else  -- a test clock: Redis expires keys in real time, so keep them an hour longer
  now, slack = tonumber(ARGV[1]), 3600000
end

-- The bucket's level now: refilled by cap per minute, never above cap.
local function load(key, cap)
  local v = redis.call('HMGET', key, 'l', 't')
  local level, ts = tonumber(v[1]), tonumber(v[2])
  if level == nil or ts == nil then return cap, now end
  if now > ts then return math.min(cap, level + (now - ts) * cap / 60000000), now end
  return level, ts  -- the clock went back (failover): no refill, keep the later time
end

-- Store a bucket until it would be full again; a full bucket is no key at all.
local function save(key, cap, level, ts)
  if level >= cap then
    redis.call('DEL', key)
    return
  end
  redis.call('HSET', key, 'l', string.format('%.17g', level), 't', string.format('%.17g', ts))
  redis.call('PEXPIRE', key, math.ceil((cap - level) * 60000 / cap) + slack)
end

local function num(x)
  if x == nil then return '' end
  return string.format('%.17g', x)
end
"""

# KEYS: requests bucket, tokens bucket. ARGV: now µs ('' = TIME), rpm, tpm (0 = no limit), tokens.
# Returns {refusal reason ('' = admitted), requests level, tokens level}, levels after deducting.
RESERVE = _BUCKETS + """
local rpm, tpm, need = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local r, rts, t, tts
if rpm > 0 then r, rts = load(KEYS[1], rpm) end
if tpm > 0 then t, tts = load(KEYS[2], tpm) end
local refused = ''
if tpm > 0 and need > tpm then refused = 'request_too_large'
elseif rpm > 0 and r < 1 then refused = 'requests'
elseif tpm > 0 and t < need then refused = 'tokens'
end
if refused == '' then
  if rpm > 0 then r = r - 1; save(KEYS[1], rpm, r, rts) end
  if tpm > 0 then t = t - need; save(KEYS[2], tpm, t, tts) end
end
return {refused, num(r), num(t)}
"""

# KEYS: tokens bucket. ARGV: now µs ('' = TIME), tpm, tokens given back (negative: overshoot).
SETTLE = _BUCKETS + """
local tpm, back = tonumber(ARGV[2]), tonumber(ARGV[3])
local t, ts = load(KEYS[1], tpm)
save(KEYS[1], tpm, math.min(tpm, t + back), ts)
return 1
"""
