--[==[
lib.lua: functions shared by every script. It is prepended to each script when the scripts are registered
(`defineScripts` in src/store/redis/redis-counter-store.ts), so every script stays one atomic EVALSHA.

Conventions:
- Every key a script touches is declared in KEYS (Redis Cluster, proxies and Redis-compatible servers that enforce
  declared keys, slot migration). Every script declares the account's five fixed keys first:
    KEYS[1] {a:<id>}:cap  capacity per limit (packed) and the presence marker / capacity version (field "v")
    KEYS[2] {a:<id>}:rs   reservations and settled results (r:<id>), idempotency ids (i:<idem>)
    KEYS[3] {a:<id>}:rx   expiry index of KEYS[2]
    KEYS[4] {a:<id>}:u    usage of every QUOTA/BUDGET limit of the account, fields "<limit id>|<field>"
    KEYS[5] {a:<id>}:fr   zset, every score 0: "<limit id>|<reservation id>" concurrency slots freed by Release,
                          dropped from the limit's sorted set the next time the limit is evaluated (ZRANGEBYLEX)
  RATE and CONCURRENCY logs are sorted sets "{a:<id>}:s:<limit id>", declared by reserve.lua (KEYS[6..]). So
  Release and the sweep only ever touch the five fixed keys, whatever the reservation names. Same hash tag: one
  cluster slot.
- Numbers: Lua numbers are doubles, exact for integers below 2^53. Amounts travel as positional decimal strings
  (no JSON decoding on the hot path) and are written with string.format('%d') (tostring would round above 1e14).
- Time: ARGV[1] overrides the clock when it is not empty (tests with a controlled clock); otherwise Redis TIME.
- Compact state: a capacity entry is a packed string (parse_cap), an open reservation a MessagePack map
  (cmsgpack, C-coded), a settled result a short packed string (see settle). An `rs` field "r:<id>" holds the
  open reservation and, once settled, its result, kept until `retention_of` (a bounded grace past the TTL).
- This file mirrors src/store/memory/in-memory-counter-store.ts; test/contract holds both to one behaviour.
]==]

local DAY_MS = 86400000
local SWEEP_BATCH = 16
-- Constants as functions, not tables: EVALSHA runs this whole file on every call, and a table literal is built
-- anew each time (a 5-entry table costs more than several comparisons); a function is one closure.
local function kind_order(kind)
  if kind == 'WINDOW' then return 0 elseif kind == 'RATE' then return 1 elseif kind == 'CONCURRENCY' then return 2
  elseif kind == 'QUOTA' then return 3 else return 4 end
end
local function reason_of(kind)
  if kind == 'WINDOW' then return 'OUTSIDE_ACCESS_WINDOW' elseif kind == 'RATE' then return 'RATE_LIMITED'
  elseif kind == 'CONCURRENCY' then return 'CONCURRENCY_LIMITED' elseif kind == 'QUOTA' then return 'QUOTA_EXHAUSTED'
  else return 'BUDGET_EXHAUSTED' end
end

local function fmt(n) return string.format('%d', n) end

-- `now` as a decimal string, set by clock(): numbers handed to redis.call are formatted by Redis with '%.14g' (a
-- floating-point printf, the dearest part of passing an argument), so the scripts pass strings they made once.
local NOW_S = ''

local function clock(override)
  local now
  if override and override ~= '' then
    now = tonumber(override)
  else
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  NOW_S = fmt(now)
  return now
end

-- The account a script works on. Locals, not constants: export_state.lua points them at each of its accounts in
-- turn (use_account), with what a script keeps (below) started afresh for each.
local CAP = KEYS[1]  -- hash: capacity per limit id, presence marker "v"
local RS = KEYS[2]   -- hash: r:<id> open reservation or settled result, i:<idem> mode char .. reservation id
local RX = KEYS[3]   -- zset: expiry index of the members above (TTL of open ones, retention of the rest)
local U = KEYS[4]    -- hash: "<limit id>|<field>" usage of QUOTA/BUDGET limits
local FR = KEYS[5]   -- zset (scores 0): "<limit id>|<reservation id>" slots freed, not yet dropped from the limit

-- Usage fields of one limit inside U. A limit's own field names (win, b, o, ot, g:<grant>, b:<start>, o:<start>,
-- bk = the rolling buckets present) are those of a per-limit hash, prefixed; limit ids never contain '|'.
local function uf(limit_id, field) return limit_id .. '|' .. field end

-- What a script has read, kept for the rest of the script. One script is one atomic step: nothing else writes the
-- account's keys while it runs, so a value read once is still the value later unless this script wrote it, and every
-- write below goes to Redis at once AND updates what is kept (write-through). The second and later calls of a group
-- (a batch's items, the concurrent calls of a tick) then read nothing again: no capacity HGET and parse, no usage
-- HMGET, no ZREMRANGEBYSCORE / ZCARD / ZRANGE of a rate or concurrency log. Each script starts with nothing kept.
local UC = {}       -- U field -> its value (a string as read, a number once incremented), or false when absent
local CAPC = {}     -- limit id -> its parsed capacity entry (KEYS[1]; no script that evaluates writes it)
local ZC = {}       -- declared sorted-set key -> { kind, n = members, first = lowest score (false: empty, nil: not
                    -- read), cut = scores up to this were dropped, pexp = window of this script's PEXPIRE }

-- Works on the account whose five fixed keys start at KEYS[first] (export_state.lua: several accounts per call).
local function use_account(first)
  CAP, RS, RX, U, FR = KEYS[first], KEYS[first + 1], KEYS[first + 2], KEYS[first + 3], KEYS[first + 4]
  UC, CAPC, ZC = {}, {}, {}
end

-- Values of U fields by position (false or nil when absent): one HMGET for the fields not known yet, none when all
-- are. The first read of a script (the only one for a single call) is HMGET's own answer, with no table built.
local function u_get(fields)
  local n, known = #fields, 0
  for i = 1, n do if UC[fields[i]] ~= nil then known = known + 1 end end
  if known == 0 then
    local vals = redis.call('HMGET', U, unpack(fields))
    for i = 1, n do UC[fields[i]] = vals[i] end
    return vals
  end
  if known < n then
    local missing = {}
    for i = 1, n do if UC[fields[i]] == nil then missing[#missing + 1] = fields[i] end end
    local vals = redis.call('HMGET', U, unpack(missing))
    for i, f in ipairs(missing) do UC[f] = vals[i] end
  end
  local out = {}
  for i = 1, n do out[i] = UC[fields[i]] end
  return out
end
local function u_get1(f) return u_get({ f })[1] end
local function u_incr(f, delta) UC[f] = redis.call('HINCRBY', U, f, delta) end
-- u_set(field, value, field, value, ...)
local function u_set(...)
  redis.call('HSET', U, ...)
  local a = { ... }
  for i = 1, #a, 2 do UC[a[i]] = a[i + 1] end
end
local function u_del(fields)
  redis.call('HDEL', U, unpack(fields))
  for _, f in ipairs(fields) do UC[f] = false end
end
-- A member added to a kept sorted-set log (ZADD's answer is how many were new).
local function z_added(key, score, added)
  local z = ZC[key]
  if not z then return end
  -- A member at or below the log's cut (a TTL or window of 0) would be dropped by the next evaluation: not counted.
  if score <= z.cut then return end
  z.n = z.n + added
  if z.first == false then z.first = score elseif z.first ~= nil and score < z.first then z.first = score end
end

-- A capacity entry, packed by the store: "<base>,<basePriority>" then ";<id>,<amount>,<priority>,<from>,<until|''>,
-- <seq>,<product|''>" per grant (ids and products never contain ',' or ';'). Parsed to numbers once (per script: CAPC).
local function parse_cap(raw)
  local b, bp, rest = string.match(raw, '^([^,;]*),([^,;]*)(.*)$')
  local g = {}
  for item in string.gmatch(rest, ';([^;]*)') do
    local id, amount, prio, from, till, seq, product = string.match(item, '^([^,]*),([^,]*),([^,]*),([^,]*),([^,]*),([^,]*),([^,]*)$')
    g[#g + 1] = { id, tonumber(amount), tonumber(prio), tonumber(from), till ~= '' and tonumber(till) or nil, tonumber(seq), product }
  end
  return { b = tonumber(b), bp = tonumber(bp), g = g }
end

-- Sources of a QUOTA/BUDGET limit active now, in burn order: priority desc, expiry asc, creation asc, id asc.
local function burn_sort(a, b)
  if a.priority ~= b.priority then return a.priority > b.priority end
  local ea = a.expires or math.huge
  local eb = b.expires or math.huge
  if ea ~= eb then return ea < eb end
  if a.seq ~= b.seq then return a.seq < b.seq end
  return a.id < b.id
end

-- Evaluates one limit for `amount` (a number) without changing usage (it may drop entries that already left their
-- window). Returns a table: pass, limit, used, remaining, reset (or nil), overage, retry (or nil), available (or
-- nil), sources (QUOTA/BUDGET), win, rolling, ufield, ofield, key (RATE/CONCURRENCY: l.key, the declared sorted
-- set). Each is built by one table constructor with every field it will hold: a table that grows field by field
-- is rehashed as it grows, and these are made for every limit of every call.
local function evaluate(l, amount, product, now)
  local kind = l.kind
  if kind == 'WINDOW' then
    local tod = now % DAY_MS
    local open, closes, next_open = false, 0, math.huge
    for _, b in ipairs(l.blocks or {}) do
      local s, e = tonumber(b[1]), tonumber(b[2])
      if tod >= s and tod < e then
        open = true
        closes = math.max(closes, now - tod + e)
      end
      local delta = (s > tod) and (s - tod) or (s + DAY_MS - tod)
      if delta < next_open then next_open = delta end
    end
    if open then return { pass = true, limit = 0, used = 0, remaining = 0, overage = 0, reset = closes } end
    if next_open == math.huge then return { pass = false, limit = 0, used = 0, remaining = 0, overage = 0 } end
    return { pass = false, limit = 0, used = 0, remaining = 0, overage = 0, reset = now + next_open, retry = next_open,
      available = now + next_open }
  end
  local key = l.key -- RATE and CONCURRENCY: the limit's sorted set, declared by the caller
  if kind == 'RATE' then
    local window = l.nwindow or tonumber(l.windowMs)
    local cut = now - window
    local z = ZC[key]
    -- Kept from an earlier call of this script unless that one dropped less (a description with a longer window).
    if not z or z.kind ~= 'RATE' or z.cut < cut then
      redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt(cut))
      local oldest = redis.call('ZRANGE', key, '0', '0', 'WITHSCORES')
      z = { kind = 'RATE', n = redis.call('ZCARD', key), first = oldest[2] and tonumber(oldest[2]) or false, cut = cut }
      ZC[key] = z
    end
    local count = z.n
    local max = l.nlimit or tonumber(l.limit)
    local pass = count + amount <= max
    local reset, retry
    if z.first then reset = z.first + window else reset = now + window end
    if not pass then
      if z.first then retry = math.max(1, z.first + window - now) else retry = window end
    end
    return { pass = pass, limit = max, used = count, remaining = math.max(0, max - count), overage = 0, reset = reset,
      retry = retry, key = key }
  end
  if kind == 'CONCURRENCY' then
    -- Slots released since the last evaluation (Release records them in FR: it never touches this key).
    -- Kept from an earlier call of this script: the same now, so nothing more has expired, and no script that
    -- evaluates a CONCURRENCY limit frees slots (only release.lua adds to FR; its settle evaluates QUOTA/BUDGET only).
    local z = ZC[key]
    if not z or z.kind ~= 'CONCURRENCY' then
      local lo, hi = '[' .. l.id .. '|', '(' .. l.id .. '}' -- '}' sorts right after '|'
      local freed = redis.call('ZRANGEBYLEX', FR, lo, hi)
      -- all of them (work proportional to the releases since the last evaluation), in chunks unpack can take
      for c = 1, #freed, 1000 do
        local ids, ms = {}, {}
        for k = c, math.min(#freed, c + 999) do
          ms[#ms + 1] = freed[k]
          ids[#ids + 1] = string.sub(freed[k], #l.id + 2)
        end
        redis.call('ZREM', key, unpack(ids))
        redis.call('ZREM', FR, unpack(ms))
      end
      redis.call('ZREMRANGEBYSCORE', key, '-inf', NOW_S)
      z = { kind = 'CONCURRENCY', n = redis.call('ZCARD', key), first = nil, cut = now }
      ZC[key] = z
    end
    local count = z.n
    local max = l.nlimit or tonumber(l.limit)
    local pass = count + amount <= max
    local retry
    if not pass then
      if z.first == nil then
        local earliest = redis.call('ZRANGE', key, '0', '0', 'WITHSCORES')
        z.first = earliest[2] and tonumber(earliest[2]) or false
      end
      if z.first then retry = math.max(1, z.first - now) else retry = 1000 end
    end
    return { pass = pass, limit = max, used = count, remaining = math.max(0, max - count), overage = 0, reset = nil,
      retry = retry, key = key }
  end

  -- QUOTA / BUDGET
  local cap
  if l.limit then
    cap = { b = l.nlimit or tonumber(l.limit), bp = 0, g = {} }
  else
    cap = CAPC[l.id]
    if not cap then
      local raw = redis.call('HGET', CAP, l.id)
      if raw then cap = parse_cap(raw) else cap = { b = 0, bp = 0, g = {} } end
      CAPC[l.id] = cap
    end
  end
  local period = l.period or { type = 'none' }
  local win, reset, rolling = '0', nil, false
  local used, rolling_over = 0, nil
  local buckets, bucket, ufield, ofield = nil, nil, nil, 'o'
  if period.type == 'fixed' then
    local b = period.bounds
    -- the bounds as numbers: parsed once per description (reserve.lua), here for a limit kept in a reservation
    local nb = l.nbounds or { tonumber(b[1]), tonumber(b[2]), tonumber(b[3]), tonumber(b[4]) }
    local i = 2
    for j = 1, 3 do
      if nb[j] <= now and now < nb[j + 1] then i = j end
    end
    win = b[i]
    reset = nb[i + 1]
  elseif period.type == 'rolling' then
    rolling = true
    local bucket_ms, window = tonumber(period.bucketMs), tonumber(period.windowMs)
    local start_ms = math.floor(now / bucket_ms) * bucket_ms
    local horizon = now - window - bucket_ms
    -- The buckets present are listed in field "bk" (no HGETALL of a hash shared by every limit of the account).
    local list = u_get1(uf(l.id, 'bk'))
    local oldest = nil
    local kept, fields, gone = {}, {}, {}
    if list then
      for start in string.gmatch(list, '[^,]+') do
        if tonumber(start) <= horizon then
          gone[#gone + 1] = uf(l.id, 'b:' .. start)
          gone[#gone + 1] = uf(l.id, 'o:' .. start)
        else
          kept[#kept + 1] = start
          fields[#fields + 1] = uf(l.id, 'b:' .. start)
          fields[#fields + 1] = uf(l.id, 'o:' .. start)
        end
      end
    end
    if #gone > 0 then
      u_del(gone)
      if #kept > 0 then u_set(uf(l.id, 'bk'), table.concat(kept, ',')) else u_del({ uf(l.id, 'bk') }) end
    end
    rolling_over = 0
    if #fields > 0 then
      local vals = u_get(fields)
      for k, start in ipairs(kept) do
        local bu, o = tonumber(vals[2 * k - 1] or '0'), tonumber(vals[2 * k] or '0')
        used = used + bu
        rolling_over = rolling_over + o
        if bu > 0 and (oldest == nil or tonumber(start) < oldest) then oldest = tonumber(start) end
      end
    end
    buckets = kept
    bucket = fmt(start_ms)
    ufield = 'b:' .. bucket
    ofield = 'o:' .. bucket
    if oldest then reset = oldest + bucket_ms + window else reset = now + window end
  end

  -- Sources active now; then every usage field this limit needs in one HMGET (win, b, o, ot, g:<grant>...).
  local sources = {}
  local base = cap.b
  if base > 0 or #cap.g == 0 then
    sources[1] = { id = 'base', amount = base, priority = cap.bp, product = '', seq = -1, used = 0,
      field = rolling and ufield or 'b', expires = (not rolling) and reset or nil }
  end
  for _, g in ipairs(cap.g) do
    -- g = { id, amount, priority, validFrom, validUntil ('' = never), seq, product }
    local from, till = g[4], g[5]
    if from <= now and (till == nil or now < till) and (g[7] == '' or g[7] == product) then
      sources[#sources + 1] = { id = g[1], amount = g[2], priority = g[3], expires = till, seq = g[6], product = g[7],
        used = 0, field = rolling and ufield or ('g:' .. g[1]) }
    end
  end
  local names = { uf(l.id, 'win'), uf(l.id, 'o'), uf(l.id, 'ot') }
  if not rolling then for _, s in ipairs(sources) do names[#names + 1] = uf(l.id, s.field) end end
  local vals = u_get(names)
  local same = vals[1] == win
  if not rolling then
    for i, s in ipairs(sources) do
      -- the base resets with the window; a grant's use is kept across windows (it has its own validity)
      if s.id ~= 'base' or same then s.used = tonumber(vals[3 + i] or '0') end
    end
  end
  if #sources > 1 then table.sort(sources, burn_sort) end

  local total, remaining = 0, 0
  for _, s in ipairs(sources) do
    total = total + s.amount
    if not rolling then
      used = used + s.used
      remaining = remaining + math.max(0, s.amount - s.used)
    end
  end
  if rolling then remaining = math.max(0, total - used) end
  local overage = 0
  if rolling then
    overage = rolling_over
  elseif same then
    overage = tonumber(vals[2] or '0')
  end

  local pass = amount <= remaining or (kind == 'QUOTA' and l.overage == true)
  -- A budget is exhausted once spend reaches it: every call fails then, a zero-cost one too (0 <= 0 must not pass).
  if kind == 'BUDGET' and remaining <= 0 then pass = false end
  local retry
  if not pass and reset then retry = math.max(1, reset - now) end
  return { pass = pass, limit = total, used = used, remaining = remaining, overage = overage, reset = reset,
    retry = retry, overage_total = tonumber(vals[3] or '0'), sources = sources, win = win, rolling = rolling,
    same = same, id = l.id, ufield = ufield, ofield = ofield, buckets = buckets, bucket = bucket }
end

-- Takes `amount` from the sources in burn order; what no source can cover becomes overage.
-- Returns the parts consumed as { {field, amount-string}, ... }.
local function consume(ev, amount)
  local id = ev.id
  if not ev.rolling and not ev.same then
    u_set(uf(id, 'win'), ev.win, uf(id, 'b'), '0', uf(id, 'o'), '0')
    ev.same = true
  end
  if ev.rolling and amount > 0 then
    -- list the current bucket once (its b:/o: fields are about to exist)
    local listed = false
    for _, b in ipairs(ev.buckets) do if b == ev.bucket then listed = true; break end end
    if not listed then
      table.insert(ev.buckets, ev.bucket)
      u_set(uf(id, 'bk'), table.concat(ev.buckets, ','))
    end
  end
  local parts = {}
  local take = amount
  if ev.rolling then
    local room = math.min(ev.remaining, take)
    if room > 0 then
      local n = fmt(room)
      u_incr(uf(id, ev.ufield), n)
      parts[#parts + 1] = { ev.ufield, n }
      take = take - room
    end
  else
    for _, s in ipairs(ev.sources) do
      if take == 0 then break end
      local avail = s.amount - s.used
      if avail > 0 then
        local t = math.min(avail, take)
        local n = fmt(t)
        u_incr(uf(id, s.field), n)
        s.used = s.used + t
        parts[#parts + 1] = { s.field, n }
        take = take - t
      end
    end
  end
  if take > 0 then
    -- 'ot' never resets: overage units ever charged on this limit, for billing.
    local n = fmt(take)
    u_incr(uf(id, ev.ofield), n)
    u_incr(uf(id, 'ot'), n)
    parts[#parts + 1] = { ev.ofield, n }
  end
  -- Keep the evaluation current, so the answer reports the state after this call without evaluating again.
  local within = amount - take
  ev.used = ev.used + within
  ev.remaining = math.max(0, ev.remaining - within)
  ev.overage = ev.overage + take
  ev.overage_total = (ev.overage_total or 0) + take
  return parts
end

local function is_overage_field(f) return string.sub(f, 1, 1) == 'o' end

-- Settled results: "<state>|<overage>|<meter>=<reserved>=<charged>,..." with state C COMMITTED, X CANCELLED,
-- E EXPIRED_CHARGED, R EXPIRED_REFUNDED, T tombstone (a CANCEL that found nothing: a late reserve of that id is a
-- no-op). An open reservation is MessagePack, whose first byte is >= 0x80; a settled result starts with a letter.
local function state_code(state)
  if state == 'COMMITTED' then return 'C' elseif state == 'CANCELLED' then return 'X'
  elseif state == 'EXPIRED_CHARGED' then return 'E' else return 'R' end
end
local function is_open(raw) return string.byte(raw, 1) >= 128 end

-- How long an "rs" record is kept: until `grace` ms past the reservation's TTL (or past now, if later). Bounded, so
-- an account's memory is bounded by its call rate times (TTL + grace), not by its history.
local function retention_of(expires, now, grace) return math.max(expires, now) + grace end

-- Settles a stored reservation: charges `charged[meter]` per limit (refunding or charging the difference),
-- frees concurrency slots, stores the compact result for idempotent replays (same field, re-scored to its
-- retention). state is one of COMMITTED, CANCELLED, EXPIRED_CHARGED, EXPIRED_REFUNDED; actual maps meter ->
-- amount string (COMMITTED only). Returns the settled string.
local function settle(id, r, state, actual, now, grace)
  local charged = {}
  for meter, reserved in pairs(r.m) do
    if state == 'COMMITTED' then charged[meter] = actual[meter] or reserved
    elseif state == 'EXPIRED_CHARGED' then charged[meter] = reserved
    else charged[meter] = '0' end
  end
  local overage = 0
  for _, en in ipairs(r.en) do
    local l = en.l
    if l.kind == 'CONCURRENCY' and state ~= 'EXPIRED_CHARGED' and state ~= 'EXPIRED_REFUNDED' then
      -- Freed here, dropped from the limit's sorted set by its next evaluation (this script does not declare it).
      -- At most as many ids wait as the limit had open reservations. (An expired slot needs nothing: its score, the
      -- TTL, has passed, and evaluation drops it by score.)
      redis.call('ZADD', FR, 0, l.id .. '|' .. id)
    end
    if l.kind == 'QUOTA' or l.kind == 'BUDGET' then
      local reserved = 0
      local entry_over = 0
      for _, p in ipairs(en.pa) do
        reserved = reserved + tonumber(p[2])
        if is_overage_field(p[1]) then entry_over = entry_over + tonumber(p[2]) end
      end
      local target = tonumber(charged[l.meter] or fmt(reserved))
      if target < reserved then
        local refund = reserved - target
        local win = u_get1(uf(l.id, 'win'))
        for i = #en.pa, 1, -1 do
          if refund <= 0 then break end
          local f, a = en.pa[i][1], tonumber(en.pa[i][2])
          local back = math.min(a, refund)
          refund = refund - back
          if is_overage_field(f) then
            entry_over = entry_over - back
            u_incr(uf(l.id, 'ot'), fmt(-back))
          end
          -- A part charged in a window that has since rolled over is not refunded: that window is history.
          local stale = (f == 'b' or f == 'o') and win ~= en.w
          if u_get1(uf(l.id, f)) and not stale then
            u_incr(uf(l.id, f), fmt(-back))
          end
        end
      elseif target > reserved then
        local ev = evaluate(l, target - reserved, r.pr, now)
        local extra = consume(ev, target - reserved)
        for _, p in ipairs(extra) do
          if is_overage_field(p[1]) then entry_over = entry_over + tonumber(p[2]) end
        end
      end
      if entry_over > overage then overage = entry_over end
    end
  end
  local meters = {}
  for meter, reserved in pairs(r.m) do meters[#meters + 1] = meter .. '=' .. reserved .. '=' .. charged[meter] end
  table.sort(meters)
  local done = state_code(state) .. '|' .. fmt(overage) .. '|' .. table.concat(meters, ',')
  redis.call('HSET', RS, 'r:' .. id, done)
  redis.call('ZADD', RX, fmt(retention_of(tonumber(r.e), now, grace)), 'r:' .. id)
  return done
end

-- Settles up to `max` expired reservations by their policy and drops records whose retention is over. Peeks at
-- the earliest deadline first, so a call with nothing due costs one ZRANGE.
local function sweep(now, max, grace)
  local first = redis.call('ZRANGE', RX, '0', '0', 'WITHSCORES')
  if not first[2] or tonumber(first[2]) > now then return 0 end
  local due = redis.call('ZRANGEBYSCORE', RX, '-inf', fmt(now), 'LIMIT', '0', fmt(max))
  local n = 0
  for _, member in ipairs(due) do
    local raw = (string.sub(member, 1, 1) == 'r') and redis.call('HGET', RS, member) or nil
    if raw and is_open(raw) then
      local r = cmsgpack.unpack(raw)
      settle(string.sub(member, 3), r, (r.p == 'charge') and 'EXPIRED_CHARGED' or 'EXPIRED_REFUNDED', {}, now, grace)
      n = n + 1
    else
      redis.call('HDEL', RS, member)
      redis.call('ZREM', RX, member)
    end
  end
  return n
end

-- The reply form of one evaluated limit, ONE string (every element of a nested reply costs the server's RESP decoder
-- more than splitting a string does): "<limit>,<used>,<remaining>,<reset|-1>,<overage>,<exceeded 0|1>,<overage
-- total>" then ";<id>,<amount>,<used>,<priority>,<expires|-1>,<product>" per source (ids and products never contain
-- ',' or ';'). Amounts through fmt: '..' would print numbers above 1e14 in exponent form.
local function reply_state(ev, exceeded)
  -- overage, exceeded, overage total: no overage is the common case, written without formatting numbers (each
  -- number string.format writes costs about a third of a redis.call of a missing hash field, and each call of it
  -- as much again: the limit and its first source are written by one call).
  local over, total, tail = ev.overage, ev.overage_total or 0, nil
  if over == 0 and total == 0 then tail = exceeded and ',0,1,0' or ',0,0,0'
  else tail = string.format(',%d,%s,%d', over, exceeded and '1' or '0', total) end
  local sources = ev.sources
  if not sources or #sources == 0 then
    return string.format('%d,%d,%d,%d%s', ev.limit, ev.used, ev.remaining, ev.reset or -1, tail)
  end
  local s = sources[1]
  local out = string.format('%d,%d,%d,%d%s;%s,%d,%d,%d,%d,%s', ev.limit, ev.used, ev.remaining, ev.reset or -1, tail,
    s.id, s.amount, s.used, s.priority, s.expires or -1, s.product)
  if #sources == 1 then return out end
  local parts = { out }
  for i = 2, #sources do
    s = sources[i]
    parts[i] = string.format('%s,%d,%d,%d,%d,%s', s.id, s.amount, s.used, s.priority, s.expires or -1, s.product)
  end
  return table.concat(parts, ';')
end
