--[==[
release.lua: settles one or more reservations of ONE account, each once, in order (RedisCounterStore groups the
Releases of an account made in the same tick: the items of a ReleaseBatch, concurrent single calls), exactly as the
same Releases made one after another.

KEYS[1]  {a:<id>}:cap
KEYS[2]  {a:<id>}:rs
KEYS[3]  {a:<id>}:rx
KEYS[4]  {a:<id>}:u    usage
KEYS[5]  {a:<id>}:fr   freed slots (the only keys settling touches — lib.lua)
ARGV[1]  clock override in ms, or '' for Redis TIME
ARGV[2]  retention grace in ms: the settled result is kept this long past the reservation's TTL
ARGV[3]  number of Releases N, then per Release 3 fields:
         reservation id; COMMIT | CANCEL; actual amounts '<meter>=<amount>' joined by ',' (meters not named are
         charged what was reserved; meter names never contain '=' or ',')

Returns ONE string: per Release, in order, "<code>|<result>", joined by a newline (a nested reply costs Redis and the
server's RESP decoder per element; results never contain a newline):
  code 0 SETTLED, 1 REPLAYED (result is the first settlement), 2 NOT_FOUND (never existed or retention over; result '')
  result = "<state>|<overage>|<meter>=<reserved>=<charged>,..." (settle in lib.lua)
A CANCEL that finds nothing leaves a tombstone for the retention grace, so a reserve of that id arriving late
(resent by the client library after a reconnect) is a no-op.
]==]

local now = clock(ARGV[1])
local grace = tonumber(ARGV[2])
local N = tonumber(ARGV[3])
sweep(now, SWEEP_BATCH * N, grace)

local function release_one(id, outcome, actual_list)
  local raw = redis.call('HGET', KEYS[2], 'r:' .. id)
  if not raw then
    if outcome == 'CANCEL' then
      redis.call('HSET', KEYS[2], 'r:' .. id, 'T|0|')
      redis.call('ZADD', KEYS[3], fmt(now + grace), 'r:' .. id)
    end
    return '2|'
  end
  if not is_open(raw) then
    if string.sub(raw, 1, 1) == 'T' then return '2|' end
    return '1|' .. raw
  end
  local actual = {}
  for meter, amount in string.gmatch(actual_list, '([^=,]+)=(%d+)') do actual[meter] = amount end
  local state = (outcome == 'CANCEL') and 'CANCELLED' or 'COMMITTED'
  return '0|' .. settle(id, cmsgpack.unpack(raw), state, actual, now, grace)
end

local out = {}
for n = 1, N do
  local a = 1 + 3 * n
  out[n] = release_one(ARGV[a], ARGV[a + 1], ARGV[a + 2])
end
return table.concat(out, '\n')
