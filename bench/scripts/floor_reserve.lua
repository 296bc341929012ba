--[==[
floor_reserve.lua: the benchmark's floor — a comparable 3-limit check-and-reserve in one script, as a bare handler
would write it: a monthly quota counter, a per-key fixed-window rate counter, per-key concurrency as a sorted set of
reservation ids scored by expiry (expired ones removed first). All or nothing: a denial changes no counter.

KEYS[1] fl:{<key>}:c   hash: used, ws (rate window start ms), wc (count in the window)
KEYS[2] fl:{<key>}:z   concurrency zset: reservation id -> expiry ms
ARGV    cost, quota limit, rate limit, rate window ms, concurrency limit, reservation ttl ms, reservation id
Returns { allowed 0|1, reservation id, used, remaining }
]==]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cost, qlimit, rlimit, window, climit, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local h = redis.call('HMGET', KEYS[1], 'used', 'ws', 'wc')
local used = tonumber(h[1]) or 0
local ws = tonumber(h[2]) or 0
local wc = tonumber(h[3]) or 0
if now - ws >= window then ws = now - (now % window); wc = 0 end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if used + cost > qlimit or wc + 1 > rlimit or redis.call('ZCARD', KEYS[2]) + 1 > climit then
  return { 0, '', used, qlimit - used }
end
used = used + cost
redis.call('HSET', KEYS[1], 'used', used, 'ws', ws, 'wc', wc + 1)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[7])
redis.call('PEXPIRE', KEYS[2], ttl * 2)
return { 1, ARGV[7], used, qlimit - used }
