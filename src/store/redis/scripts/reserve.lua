--[==[
reserve.lua: CheckAndReserve for one call — check every limit, and only when all pass apply all of them and store
the reservation. Why one Lua script and not MULTI: the decision depends on values read in the same atomic step
(check-then-act); MULTI cannot branch on what it reads, WATCH would retry under contention.

KEYS[1]   {a:<id>}:cap   capacity hash (field per limit id, JSON) and presence marker (field "v")
KEYS[2]   {a:<id>}:rs    reservations / settled results / idempotency ids
KEYS[3]   {a:<id>}:rx    expiry index of KEYS[2]
KEYS[4..] {a:<id>}:s:<limit id>  one state key per limit, in the command's order
ARGV[1]   clock override in ms, or '' for Redis TIME
ARGV[2]   the command as JSON, every number a decimal string:
          { reservationId, idempotencyId, mode (ENFORCE|CHECK_ONLY|SHADOW), ttlMs, product, expiryPolicy,
            gates = [{reason, from, until}], limits = [{id, kind, meter, amount, limit, windowMs, period, overage,
            blocks}] }

Returns { code, reason, deniedLimitId, retryAfterMs, availableAt, reservationId, overage, replayed, now,
          shadowReason, states }
  code      0 ALLOWED, 1 DENIED, 2 NEED_RESTORE (account state absent: restore from Postgres, then call again)
  reason    '' or a deny reason; retryAfterMs/availableAt -1 when not applicable; overage/replayed 0|1
  states    one reply_state (lib.lua) per limit
]==]

local now = clock(ARGV[1])
local cmd = cjson.decode(ARGV[2])
if redis.call('HEXISTS', KEYS[1], 'v') == 0 then
  return { 2, '', '', -1, -1, '', 0, 0, now, '', {} }
end
sweep(now, SWEEP_BATCH)

local function zero_states()
  local out = {}
  for _, l in ipairs(cmd.limits) do
    local copy = {}
    for k, v in pairs(l) do copy[k] = v end
    copy.amount = '0'
    table.insert(out, reply_state(evaluate(copy, cmd.product, now), false))
  end
  return out
end

if cmd.idempotencyId ~= '' then
  local earlier = redis.call('HGET', KEYS[2], 'i:' .. cmd.idempotencyId)
  if earlier then
    local overage = 0
    local raw = redis.call('HGET', KEYS[2], 'r:' .. earlier)
    if raw then
      for _, en in ipairs(cjson.decode(raw).en) do
        for _, p in ipairs(en.pa) do if is_overage_field(p[1]) then overage = 1 end end
      end
    end
    return { 0, '', '', -1, -1, earlier, overage, 1, now, '', zero_states() }
  end
end

local reason, retry, available, denied_id = '', -1, -1, ''
for _, g in ipairs(cmd.gates) do
  if g.from and g.from ~= '' and now < tonumber(g.from) then
    reason, available, retry = g.reason, tonumber(g.from), tonumber(g.from) - now
    break
  end
  if g['until'] and g['until'] ~= '' and now >= tonumber(g['until']) then
    reason = g.reason
    break
  end
end

local evals = {}
local worst = nil
for i, l in ipairs(cmd.limits) do
  local ev = evaluate(l, cmd.product, now)
  evals[i] = ev
  if not ev.pass and (worst == nil or KIND_ORDER[l.kind] < KIND_ORDER[cmd.limits[worst].kind]) then worst = i end
end
if reason == '' and worst then
  local ev = evals[worst]
  reason = REASON_BY_KIND[cmd.limits[worst].kind]
  denied_id = cmd.limits[worst].id
  retry = ev.retry or -1
  available = ev.available or -1
end

local function states_of(list)
  local out = {}
  for i, ev in ipairs(list) do table.insert(out, reply_state(ev, cmd.limits[i].id == denied_id)) end
  return out
end

if cmd.mode == 'CHECK_ONLY' or (reason ~= '' and cmd.mode == 'ENFORCE') then
  return { (reason ~= '') and 1 or 0, reason, denied_id, retry, available, '', 0, 0, now, '', states_of(evals) }
end

-- ENFORCE allowed, or SHADOW: store the reservation. A SHADOW would-deny stores an empty one so Release works.
local expires = now + tonumber(cmd.ttlMs)
local r = { e = fmt(expires), p = cmd.expiryPolicy, pr = cmd.product, m = {}, en = {} }
local overage = 0
local shadow = ''
if reason ~= '' then
  shadow = reason
else
  for i, l in ipairs(cmd.limits) do
    local ev = evals[i]
    local amount = tonumber(l.amount)
    r.m[l.meter] = l.amount
    local parts = {}
    if amount > 0 then
      if l.kind == 'RATE' then
        redis.call('ZADD', ev.key, now, cmd.reservationId)
        redis.call('PEXPIRE', ev.key, tonumber(l.windowMs))
        ev.used, ev.remaining = ev.used + 1, math.max(0, ev.remaining - 1)
        if ev.used == 1 then ev.reset = now + tonumber(l.windowMs) end
      elseif l.kind == 'CONCURRENCY' then
        redis.call('ZADD', ev.key, expires, cmd.reservationId)
        table.insert(parts, { 'slot', '1' })
        ev.used, ev.remaining = ev.used + 1, math.max(0, ev.remaining - 1)
      elseif l.kind == 'QUOTA' or l.kind == 'BUDGET' then
        -- No TTL on quota state (rolling buckets are pruned as they are read): it holds the overage billing total.
        parts = consume(ev, amount)
        for _, p in ipairs(parts) do if is_overage_field(p[1]) then overage = 1 end end
      end
    end
    table.insert(r.en, { l = l, pa = parts, w = ev.win or '0' })
  end
end
redis.call('HSET', KEYS[2], 'r:' .. cmd.reservationId, cjson.encode(r))
redis.call('ZADD', KEYS[3], expires, 'r:' .. cmd.reservationId)
if cmd.idempotencyId ~= '' then
  redis.call('HSET', KEYS[2], 'i:' .. cmd.idempotencyId, cmd.reservationId)
  redis.call('ZADD', KEYS[3], expires + SETTLED_RETENTION_MS, 'i:' .. cmd.idempotencyId)
end
-- evaluate() and consume() keep `evals` current, so the answer needs no second evaluation.
return { 0, '', denied_id, retry, available, cmd.reservationId, overage, 0, now, shadow, states_of(evals) }
