--[==[
sweep.lua: settles the account's expired reservations by their plan policy (charge or refund) and drops records
whose retention is over. Reserve and release sweep a bounded batch lazily; the usage flusher calls this for
accounts that were active, so slots and refunds do not wait for the next call.

KEYS[1]  {a:<id>}:cap
KEYS[2]  {a:<id>}:rs
KEYS[3]  {a:<id>}:rx
KEYS[4]  {a:<id>}:u
KEYS[5]  {a:<id>}:fr
ARGV[1]  clock override in ms, or '' for Redis TIME
ARGV[2]  maximum number of members to process
ARGV[3]  retention grace in ms (for the results of the reservations settled here)

Returns the number of reservations settled.
]==]

return sweep(clock(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
