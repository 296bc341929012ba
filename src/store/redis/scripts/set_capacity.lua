--[==[
set_capacity.lua: replaces every capacity entry of one account (usage is untouched) and marks the account present.
With ARGV[3] it also restores usage state for limits whose state key is absent (rebuild after Redis lost data).

KEYS[1]  {a:<id>}:cap
ARGV[1]  clock override (unused; kept for a uniform signature)
ARGV[2]  JSON { limitId: capacityJSON } — capacityJSON = { b, bp, g = [[id, amount, priority, from, until|'', seq,
         product]] }
ARGV[3]  optional JSON { limitId: { field: value } } usage snapshot to restore where absent
ARGV[4]  the account's capacity version in Postgres; stored as field "v". A write whose version is lower than the
         stored one is ignored, so two racing syncs never leave the older capacity last.

Returns the number of state keys restored, or -1 when the write was older than what is stored.
]==]

local version = tonumber(ARGV[4] or '0') or 0
local stored = redis.call('HGET', KEYS[1], 'v')
if stored and tonumber(stored) > version then return -1 end
local caps = cjson.decode(ARGV[2])
redis.call('DEL', KEYS[1])
local args = { 'v', string.format('%d', version) }
for id, c in pairs(caps) do
  table.insert(args, id)
  table.insert(args, cjson.encode(c))
end
redis.call('HSET', KEYS[1], unpack(args))
local restored = 0
if ARGV[3] and ARGV[3] ~= '' then
  for id, fields in pairs(cjson.decode(ARGV[3])) do
    local key = state_key(id)
    if redis.call('EXISTS', key) == 0 then
      local hs = {}
      for f, v in pairs(fields) do table.insert(hs, f); table.insert(hs, v) end
      if #hs > 0 then
        redis.call('HSET', key, unpack(hs))
        restored = restored + 1
      end
    end
  end
end
return restored
