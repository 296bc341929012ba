--[==[
export_state.lua: reads the durable usage state (QUOTA/BUDGET hashes) of the given limits, for usage snapshots.

KEYS[1]  {a:<id>}:cap
ARGV[1]  clock override (unused)
ARGV[2..] limit ids

Returns { limitId, { field, value, ... }, limitId, { ... }, ... } for the limits that have state.
]==]

local out = {}
for i = 2, #ARGV do
  local all = redis.call('HGETALL', state_key(ARGV[i]))
  if #all > 0 then
    table.insert(out, ARGV[i])
    table.insert(out, all)
  end
end
return out
