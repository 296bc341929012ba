--[==[
sweep.lua: settles the account's expired reservations by their plan policy (charge or refund) and drops expired
idempotency ids and settled results. Reserve and release sweep a bounded batch lazily; the usage flusher calls
this for accounts that were active, so slots and refunds do not wait for the next call.

KEYS[1]  {a:<id>}:cap
ARGV[1]  clock override in ms, or '' for Redis TIME
ARGV[2]  maximum number of members to process

Returns the number of reservations settled.
]==]

return sweep(clock(ARGV[1]), tonumber(ARGV[2]))
