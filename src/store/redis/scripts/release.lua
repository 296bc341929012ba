--[==[
release.lua: settles one reservation, once.

KEYS[1]  {a:<id>}:cap
KEYS[2]  {a:<id>}:rs
KEYS[3]  {a:<id>}:rx
ARGV[1]  clock override in ms, or '' for Redis TIME
ARGV[2]  reservation id
ARGV[3]  COMMIT | CANCEL
ARGV[4]  actual amounts as JSON { meter: "amount" } (meters not named are charged what was reserved)

Returns { code, resultJSON }
  code 0 SETTLED, 1 REPLAYED (resultJSON is the first settlement), 2 NOT_FOUND (never existed or retention over)
  resultJSON = { s = state, m = {meter: reserved}, c = {meter: charged}, o = overage } (numbers as strings)
]==]

local now = clock(ARGV[1])
sweep(now, SWEEP_BATCH)
local id = ARGV[2]
local done = redis.call('HGET', KEYS[2], 'd:' .. id)
if done then return { 1, done } end
local raw = redis.call('HGET', KEYS[2], 'r:' .. id)
if not raw then return { 2, '' } end
local state = (ARGV[3] == 'CANCEL') and 'CANCELLED' or 'COMMITTED'
local result = settle(id, cjson.decode(raw), state, cjson.decode(ARGV[4]), now)
return { 0, cjson.encode(result) }
