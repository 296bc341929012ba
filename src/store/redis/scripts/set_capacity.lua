--[==[
set_capacity.lua: replaces every capacity entry of one account (usage is untouched) and marks the account present.
With ARGV[3] it also restores usage state for limits whose state key is absent (rebuild after Redis lost data).

KEYS[1]  {a:<id>}:cap
ARGV[1]  clock override (unused; kept for a uniform signature)
ARGV[2]  JSON { limitId: capacityJSON } — capacityJSON = { b, bp, g = [[id, amount, priority, from, until|'', seq,
         product]] }
ARGV[3]  optional JSON { limitId: { field: value } } usage snapshot to restore where absent

Returns the number of state keys restored.
]==]

local caps = cjson.decode(ARGV[2])
redis.call('DEL', KEYS[1])
local args = { 'v', '1' }
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
