--[==[
export_state.lua: reads the durable usage state (QUOTA/BUDGET fields) of the given limits, for usage snapshots.
A snapshot has the same shape as the in-memory store's: per limit, its own field names (no "<limit id>|" prefix,
no rolling bucket list "bk").

KEYS[1]  {a:<id>}:cap
KEYS[2]  {a:<id>}:rs   (declared for the uniform layout; unused)
KEYS[3]  {a:<id>}:rx   (unused)
KEYS[4]  {a:<id>}:u
KEYS[5]  {a:<id>}:fr   (unused)
ARGV[1]  clock override (unused)
ARGV[2..] limit ids

Returns { limitId, { field, value, ... }, limitId, { ... }, ... } for the limits that have state.
]==]

local wanted = {}
for i = 2, #ARGV do wanted[ARGV[i]] = {} end
local all = redis.call('HGETALL', U)
for k = 1, #all, 2 do
  local bar = string.find(all[k], '|', 1, true)
  if bar then
    local fields = wanted[string.sub(all[k], 1, bar - 1)]
    local f = string.sub(all[k], bar + 1)
    if fields and f ~= 'bk' then
      table.insert(fields, f)
      table.insert(fields, all[k + 1])
    end
  end
end
local out = {}
for i = 2, #ARGV do
  local fields = wanted[ARGV[i]]
  if #fields > 0 then
    table.insert(out, ARGV[i])
    table.insert(out, fields)
  end
end
return out
