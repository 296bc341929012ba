--[==[
release.lua: settles one reservation, once.

KEYS[1]  {a:<id>}:cap
KEYS[2]  {a:<id>}:rs
KEYS[3]  {a:<id>}:rx
KEYS[4]  {a:<id>}:u    usage
KEYS[5]  {a:<id>}:fr   freed slots (the only keys settling touches — lib.lua)
ARGV[1]  clock override in ms, or '' for Redis TIME
ARGV[2]  retention grace in ms: the settled result is kept this long past the reservation's TTL
ARGV[3]  reservation id
ARGV[4]  COMMIT | CANCEL
ARGV[5..] actual amounts as pairs: meter, amount (meters not named are charged what was reserved)

Returns { code, result }
  code 0 SETTLED, 1 REPLAYED (result is the first settlement), 2 NOT_FOUND (never existed or retention over)
  result = "<state>|<overage>|<meter>=<reserved>=<charged>,..." (settle in lib.lua)
A CANCEL that finds nothing leaves a tombstone for the retention grace, so a reserve of that id arriving late
(resent by the client library after a reconnect) is a no-op.
]==]

local now = clock(ARGV[1])
local grace = tonumber(ARGV[2])
sweep(now, SWEEP_BATCH, grace)
local id = ARGV[3]
local raw = redis.call('HGET', KEYS[2], 'r:' .. id)
if not raw then
  if ARGV[4] == 'CANCEL' then
    redis.call('HSET', KEYS[2], 'r:' .. id, 'T|0|')
    redis.call('ZADD', KEYS[3], now + grace, 'r:' .. id)
  end
  return { 2, '' }
end
if not is_open(raw) then
  if string.sub(raw, 1, 1) == 'T' then return { 2, '' } end
  return { 1, raw }
end
local actual = {}
for i = 5, #ARGV, 2 do actual[ARGV[i]] = ARGV[i + 1] end
local state = (ARGV[4] == 'CANCEL') and 'CANCELLED' or 'COMMITTED'
return { 0, settle(id, cmsgpack.unpack(raw), state, actual, now, grace) }
