--[==[
set_capacity.lua: replaces every capacity entry of one account (usage is untouched).
Mode "sync" (after a commit, or the reconciler) only updates an account that is present. Mode "restore" (first touch,
or after Redis lost data) also restores usage state for limits that have none, and marks it present.

KEYS[1]  {a:<id>}:cap
KEYS[2]  {a:<id>}:rs   (declared for the uniform layout; unused)
KEYS[3]  {a:<id>}:rx   (unused)
KEYS[4]  {a:<id>}:u    usage, where snapshot states are restored (fields "<limit id>|<field>")
KEYS[5]  {a:<id>}:fr   (unused)
ARGV[1]  clock override (unused; kept for a uniform signature)
ARGV[2]  JSON { limitId: packed capacity } — the packed form parse_cap (lib.lua) reads:
         "<base>,<basePriority>" then ";<id>,<amount>,<priority>,<from>,<until|''>,<seq>,<product|''>" per grant
ARGV[3]  optional JSON { limitId: { field: value } } usage snapshot to restore where absent
ARGV[4]  the account's capacity version in Postgres; stored as field "v". A write whose version is lower than the
         stored one is ignored, so two racing syncs never leave the older capacity last.

ARGV[5]  "sync" | "restore"

Returns the number of limit states restored; -1 when the capacity was older than what is stored (states are still
restored); -2 for a sync of an account that is not present.
]==]

local version = tonumber(ARGV[4] or '0') or 0
local mode = ARGV[5] or 'sync'
local stored = redis.call('HGET', KEYS[1], 'v')
-- A sync never creates the account: if Redis lost it, the next call must restore usage from the snapshot first.
if mode == 'sync' and not stored then return -2 end

local restored = 0
if mode == 'restore' and ARGV[3] and ARGV[3] ~= '' then
  for id, fields in pairs(cjson.decode(ARGV[3])) do
    local names, hs, buckets = {}, {}, {}
    for f, v in pairs(fields) do
      names[#names + 1] = uf(id, f)
      table.insert(hs, uf(id, f)); table.insert(hs, v)
      local p = string.sub(f, 1, 2)
      if p == 'b:' or p == 'o:' then buckets[string.sub(f, 3)] = true end
    end
    local present = false
    if #names > 0 then
      for _, v in ipairs(redis.call('HMGET', U, unpack(names))) do if v then present = true end end
    end
    if not present then
      local list = {}
      for b in pairs(buckets) do list[#list + 1] = b end
      if #list > 0 then table.insert(hs, uf(id, 'bk')); table.insert(hs, table.concat(list, ',')) end
      if #hs > 0 then
        redis.call('HSET', U, unpack(hs))
        restored = restored + 1
      end
    end
  end
end

if stored and tonumber(stored) > version then return -1 end
local caps = cjson.decode(ARGV[2])
redis.call('DEL', KEYS[1])
local args = { 'v', string.format('%d', version) }
for id, c in pairs(caps) do
  table.insert(args, id)
  table.insert(args, c)
end
redis.call('HSET', KEYS[1], unpack(args))
return restored
