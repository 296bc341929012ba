--[==[
export_state.lua: reads the durable usage state (QUOTA/BUDGET fields) of the given limits of ONE OR MORE accounts, for
usage snapshots, after settling up to ARGV[2] expired reservations of each (the flusher's sweep and export in one
script; 0: no sweep). On a single Redis the store sends the exports of a tick together (up to 32 accounts per call:
one script's fixed cost and one round of the server's Redis client per group, not per account); on a Cluster each
account goes alone (its keys share one slot, another account's need not). A snapshot has the same shape as the
in-memory store's: per limit, its own field names (no "<limit id>|" prefix, no rolling bucket list "bk").

KEYS     per account, its five fixed keys, in the order of ARGV's accounts:
         {a:<id>}:cap, {a:<id>}:rs, {a:<id>}:rx, {a:<id>}:u, {a:<id>}:fr   (the keys settling touches, lib.lua)
ARGV[1]  clock override in ms, or '' for Redis TIME
ARGV[2]  most expired reservations of each account to settle first (0: none)
ARGV[3]  retention grace in ms (for what settling stores)
ARGV[4]  number of accounts A, then per account: the number of limit ids L, then the L limit ids

Returns per account, in order: { settled, { limitId, { field, value, ... }, limitId, { ... }, ... } } for the limits
that have state. Once the accounts done have settled ARGV[2] reservations in all, the script stops before the next
account and answers for those done only (the store sends the rest again): one call settles fewer than 2 x ARGV[2].
Dropping records whose retention is over is not counted: each account's sweep may still drop up to ARGV[2] of those.
]==]

local sweep_max = tonumber(ARGV[2])
local now = sweep_max > 0 and clock(ARGV[1]) or 0
local grace = tonumber(ARGV[3])
local result = {}
local a = 5
local total = 0
for n = 1, tonumber(ARGV[4]) do
  if sweep_max > 0 and total >= sweep_max then break end
  use_account(5 * (n - 1) + 1)
  local L = tonumber(ARGV[a])
  local ids = {}
  for i = 1, L do ids[i] = ARGV[a + i] end
  a = a + L + 1
  local settled = 0
  if sweep_max > 0 then settled = sweep(now, sweep_max, grace) end
  total = total + settled
  local wanted = {}
  for _, id in ipairs(ids) do wanted[id] = {} end
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
  for _, id in ipairs(ids) do
    local fields = wanted[id]
    if #fields > 0 then
      table.insert(out, id)
      table.insert(out, fields)
    end
  end
  result[n] = { settled, out }
end
return result
