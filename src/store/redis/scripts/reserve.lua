--[==[
reserve.lua: CheckAndReserve for one or more calls of ONE account, in order: per call, check every limit, and only
when all pass apply all of them and store the reservation. Why one Lua script and not MULTI: the decision depends on
values read in the same atomic step (check-then-act); MULTI cannot branch on what it reads, WATCH would retry under
contention. Several calls of one account in one script (RedisCounterStore groups the calls of an account made in the
same tick: the items of a CheckAndReserveBatch, or concurrent single calls) decide exactly as the same calls made one
after another would: each sees what the previous ones applied.
Idempotent on the reservation id: a resent command (ioredis resends a command whose reply was lost) finds its id
stored and returns the stored outcome; an id cancelled before it arrived (tombstone) is a no-op.

KEYS[1]   {a:<id>}:cap   capacity hash (field per limit id, packed string) and presence marker (field "v")
KEYS[2]   {a:<id>}:rs    reservations and settled results (r:<id>), idempotency ids (i:<idem>)
KEYS[3]   {a:<id>}:rx    expiry index of KEYS[2]
KEYS[4]   {a:<id>}:u     QUOTA/BUDGET usage of every limit (lib.lua)
KEYS[5]   {a:<id>}:fr    concurrency slots freed by Release, not yet dropped (lib.lua)
KEYS[5+i] {a:<id>}:s:<limit id> of limit description i: the sorted set of a RATE or CONCURRENCY limit (declared,
          unused, for the other kinds)
ARGV, positional, every number a decimal string:
  [1] clock override in ms, or '' for Redis TIME      [2] retention grace in ms (kept past the TTL)
  [3] number of limit descriptions D, then D descriptions, each ONE string of 12 fields joined by '|' (ids, meters
      and products never contain '|'): id | kind | meter | limit or '' | windowMs or '' | overage '1' or '' |
      period type (fixed, rolling, none or '') | p1 | p2 | p3 | p4 (fixed: the four bounds; rolling: windowMs,
      bucketMs) | blocks ('<start>-<end>,...' or '')
  then the number of calls N, then per call 8 fields:
      reservation id; idempotency id or '', optionally followed by '|' and the request's hash (ids never contain
      '|'); mode E (ENFORCE), C (CHECK_ONLY), S (SHADOW); ttl ms; product; expiry policy (charge | refund);
      gates, '' or '<reason>,<from or ''>,<until or ''>' joined by ';'; limits, '<description index>=<amount>'
      joined by ',' in the call's order

Returns 2 when the account state is absent (NEED_RESTORE: restore it from Postgres, then call again; nothing was
applied), else ONE string: the answers of the calls, in order, joined by a newline (converting a reply costs Redis
per element: a table each would cost more than the whole string), each answer its fields joined by '|':
  code|reason|deniedLimitId|retryAfterMs|availableAt|reservationId|overage|replayed|now|shadowReason then |state per
  limit
  code      0 ALLOWED, 1 DENIED, 3 IDEMPOTENCY_MISMATCH (the idempotency id was recorded for a request with another
            hash; nothing applied)
  reason    '' or a deny reason; retryAfterMs/availableAt -1 when not applicable; overage/replayed 0|1
  state     one reply_state string (lib.lua) per limit (none for a replay of a tombstone)
]==]

local now = clock(ARGV[1])
if redis.call('HEXISTS', KEYS[1], 'v') == 0 then return 2 end
local grace = tonumber(ARGV[2])

-- Limit descriptions, parsed once per script call (a batch's calls share them), each into one table constructor
-- with every field (a table that grows field by field is rehashed as it grows). nlimit, nwindow: the numbers.
local descs = {}
local D = tonumber(ARGV[3])
for d = 1, D do
  local id, kind, meter, lim, win, ov, pt, p1, p2, p3, p4, blocks = string.match(ARGV[3 + d],
    '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
  local period, nbounds, bl = nil, nil, nil
  if pt == 'fixed' then
    period = { type = 'fixed', bounds = { p1, p2, p3, p4 } }
    nbounds = { tonumber(p1), tonumber(p2), tonumber(p3), tonumber(p4) }
  elseif pt == 'rolling' then
    period = { type = 'rolling', windowMs = p1, bucketMs = p2 }
  elseif pt == 'none' then
    period = { type = 'none' }
  end
  if blocks ~= '' then
    bl = {}
    for s, e in string.gmatch(blocks, '(%d+)-(%d+)') do bl[#bl + 1] = { s, e } end
  end
  descs[d] = { id = id, kind = kind, meter = meter, key = KEYS[5 + d], overage = ov == '1',
    limit = lim ~= '' and lim or nil, nlimit = lim ~= '' and tonumber(lim) or nil,
    windowMs = win ~= '' and win or nil, nwindow = win ~= '' and tonumber(win) or nil,
    period = period, nbounds = nbounds, blocks = bl }
end
local N = tonumber(ARGV[4 + D])
sweep(now, SWEEP_BATCH * N, grace)

-- One call's answer as ONE string, its fields joined by '|' and then one reply_state per limit (states never contain
-- '|'): every element of a nested reply costs Redis (converting the script's reply) and the server's RESP decoder
-- more than splitting a string does.
local function answer(code, reason, denied, retry, available, rid, overage, replayed, shadow, states)
  -- one concatenation (a single new string), not a table of the fields joined: half the cost
  local head = code .. '|' .. reason .. '|' .. denied .. '|' .. (retry == -1 and '-1' or fmt(retry)) .. '|' ..
    (available == -1 and '-1' or fmt(available)) .. '|' .. rid .. '|' .. overage .. '|' .. replayed .. '|' .. NOW_S ..
    '|' .. shadow
  if #states == 0 then return head end
  return head .. '|' .. table.concat(states, '|')
end

-- The states of limits evaluated for 0 units (the answer of a replay: what is left now, nothing applied).
local function zero_states(limits, product)
  local out = {}
  for i, l in ipairs(limits) do out[i] = reply_state(evaluate(l, 0, product, now), false) end
  return out
end

-- The answer for a reservation already stored (open or settled): its outcome again, nothing applied.
local function replay(id, raw, limits, product)
  local overage = '0'
  if is_open(raw) then
    for _, en in ipairs(cmsgpack.unpack(raw).en) do
      for _, p in ipairs(en.pa) do if is_overage_field(p[1]) then overage = '1' end end
    end
  elseif string.match(raw, '^.|(%d+)|') ~= '0' then
    overage = '1'
  end
  return answer('0', '', '', -1, -1, id, overage, '1', '', zero_states(limits, product))
end

local function states_of(evals, limits, denied_id)
  local out = {}
  for i, ev in ipairs(evals) do out[i] = reply_state(ev, limits[i].id == denied_id) end
  return out
end

local function reserve_one(rid, idem, mode, ttl, product, policy, gate_list, limit_list)
  local ihash = ''
  do
    local bar = string.find(idem, '|', 1, true)
    if bar then idem, ihash = string.sub(idem, 1, bar - 1), string.sub(idem, bar + 1) end
  end
  -- The call's limits: its descriptions, and the amounts (strings as sent, numbers to compute with).
  local limits, amounts, units = {}, {}, {}
  for d, amount in string.gmatch(limit_list, '(%d+)=(%d+)') do
    local n = #limits + 1
    limits[n], amounts[n], units[n] = descs[tonumber(d)], amount, tonumber(amount)
  end

  if mode ~= 'C' then
    local prior = redis.call('HGET', KEYS[2], 'r:' .. rid)
    if prior then
      if string.sub(prior, 1, 1) == 'T' then return answer('1', '', '', -1, -1, '', '0', '1', '', {}) end
      return replay(rid, prior, limits, product)
    end
  end

  if idem ~= '' then
    -- The record is the mode's letter and the reservation id. A SHADOW decision never satisfies an enforcing call
    -- (it was not enforced); an enforced one satisfies every mode.
    -- Record: the mode's letter, then '|<hash>|' when the request carried one, then the reservation id ('r~...').
    local rec = redis.call('HGET', KEYS[2], 'i:' .. idem)
    local earlier, rhash = nil, ''
    if rec then
      earlier = string.sub(rec, 2)
      if string.sub(earlier, 1, 1) == '|' then
        local close = string.find(earlier, '|', 2, true)
        rhash, earlier = string.sub(earlier, 2, close - 1), string.sub(earlier, close + 1)
      end
    end
    -- The same id for another request is an error, never the other request's answer (records without a hash match).
    if rec and ihash ~= '' and rhash ~= '' and ihash ~= rhash then
      return answer('3', '', '', -1, -1, earlier, '0', '0', '', {})
    end
    if rec and (string.sub(rec, 1, 1) == 'E' or mode == 'S') then
      local raw = redis.call('HGET', KEYS[2], 'r:' .. earlier)
      if raw then return replay(earlier, raw, limits, product) end
      return answer('0', '', '', -1, -1, earlier, '0', '1', '', zero_states(limits, product))
    end
  end

  local reason, retry, available, denied_id = '', -1, -1, ''
  if gate_list ~= '' then
    for g_reason, from, till in string.gmatch(gate_list, '([^,;]*),([^,;]*),([^,;]*)') do
      if from ~= '' and now < tonumber(from) then
        reason, available, retry = g_reason, tonumber(from), tonumber(from) - now
        break
      end
      if till ~= '' and now >= tonumber(till) then
        reason = g_reason
        break
      end
    end
  end

  local evals = {}
  local worst = nil
  for i, l in ipairs(limits) do
    local ev = evaluate(l, units[i], product, now)
    evals[i] = ev
    if not ev.pass and (worst == nil or kind_order(l.kind) < kind_order(limits[worst].kind)) then worst = i end
  end
  if reason == '' and worst then
    local ev = evals[worst]
    reason = reason_of(limits[worst].kind)
    denied_id = limits[worst].id
    retry = ev.retry or -1
    available = ev.available or -1
  end

  if mode == 'C' or (reason ~= '' and mode == 'E') then
    return answer((reason ~= '') and '1' or '0', reason, denied_id, retry, available, '', '0', '0', '', states_of(evals, limits, denied_id))
  end

  -- ENFORCE allowed, or SHADOW: store the reservation. A SHADOW would-deny stores an empty one so Release works.
  -- Stored compactly: only what settling needs (QUOTA/BUDGET parts and their limit, CONCURRENCY ids, meters).
  local expires = now + ttl
  local expires_s = fmt(expires)
  local r = { e = expires, p = policy, pr = product, m = {}, en = {} }
  local overage = '0'
  local shadow = ''
  if reason ~= '' then
    shadow = reason
  else
    for i, l in ipairs(limits) do
      local ev = evals[i]
      local amount = units[i]
      r.m[l.meter] = amounts[i]
      if l.kind == 'QUOTA' or l.kind == 'BUDGET' then
        -- No TTL on quota state (rolling buckets are pruned as they are read): it holds the overage billing total.
        -- Kept even for a zero amount: a Release may still charge its actual on this limit.
        local parts = {}
        if amount > 0 then parts = consume(ev, amount) end
        for _, p in ipairs(parts) do if is_overage_field(p[1]) then overage = '1' end end
        local kept = { id = l.id, kind = l.kind, meter = l.meter, limit = l.limit, period = l.period, overage = l.overage }
        table.insert(r.en, { l = kept, pa = parts, w = ev.win or '0' })
      elseif amount > 0 then
        if l.kind == 'RATE' then
          z_added(ev.key, now, redis.call('ZADD', ev.key, NOW_S, rid))
          -- once per script and window (evaluate kept the log): every entry this script adds has the same score,
          -- so a second PEXPIRE would only move the key's expiry by the microseconds the script has run
          local z = ZC[ev.key]
          if z.pexp ~= l.windowMs then
            redis.call('PEXPIRE', ev.key, l.windowMs)
            z.pexp = l.windowMs
          end
          ev.used, ev.remaining = ev.used + 1, math.max(0, ev.remaining - 1)
          if ev.used == 1 then ev.reset = now + tonumber(l.windowMs) end
        elseif l.kind == 'CONCURRENCY' then
          z_added(ev.key, expires, redis.call('ZADD', ev.key, expires_s, rid))
          ev.used, ev.remaining = ev.used + 1, math.max(0, ev.remaining - 1)
          table.insert(r.en, { l = { id = l.id, kind = l.kind }, pa = {}, w = '0' })
        end
      end
    end
  end
  redis.call('HSET', KEYS[2], 'r:' .. rid, cmsgpack.pack(r))
  redis.call('ZADD', KEYS[3], expires_s, 'r:' .. rid)
  if idem ~= '' then
    redis.call('HSET', KEYS[2], 'i:' .. idem, mode .. (ihash ~= '' and ('|' .. ihash .. '|') or '') .. rid)
    redis.call('ZADD', KEYS[3], fmt(retention_of(expires, now, grace)), 'i:' .. idem)
  end
  -- evaluate() and consume() keep `evals` current, so the answer needs no second evaluation.
  return answer('0', '', denied_id, retry, available, rid, overage, '0', shadow, states_of(evals, limits, denied_id))
end

local out = {}
local a = 5 + D
for n = 1, N do
  out[n] = reserve_one(ARGV[a], ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3]), ARGV[a + 4], ARGV[a + 5], ARGV[a + 6], ARGV[a + 7])
  a = a + 8
end
return table.concat(out, '\n')
