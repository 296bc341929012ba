--[==[
export_state.lua: reads the durable usage state (QUOTA/BUDGET fields) of the given limits, for usage snapshots,
after settling up to ARGV[2] expired reservations (the flusher's sweep and export in one script; 0: no sweep).
A snapshot has the same shape as the in-memory store's: per limit, its own field names (no "<limit id>|" prefix,
no rolling bucket list "bk").

KEYS[1]  {a:<id>}:cap
KEYS[2]  {a:<id>}:rs
KEYS[3]  {a:<id>}:rx
KEYS[4]  {a:<id>}:u
KEYS[5]  {a:<id>}:fr   (the five keys settling touches, lib.lua)
ARGV[1]  clock override in ms, or '' for Redis TIME
ARGV[2]  most expired reservations to settle first (0: none)
ARGV[3]  retention grace in ms (for what settling stores)
ARGV[4..] limit ids

Returns { settled, { limitId, { field, value, ... }, limitId, { ... }, ... } } for the limits that have state.
]==]

local settled = 0
if tonumber(ARGV[2]) > 0 then settled = sweep(clock(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])) end
local wanted = {}
for i = 4, #ARGV do wanted[ARGV[i]] = {} end
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
for i = 4, #ARGV do
  local fields = wanted[ARGV[i]]
  if #fields > 0 then
    table.insert(out, ARGV[i])
    table.insert(out, fields)
  end
end
return { settled, out }
