/**
 * InMemoryCounterStore: the CounterStore of the embedded default (one process, no Redis).
 *
 * It mirrors src/store/redis/scripts/*.lua step by step on the same data shapes (hashes of strings, sorted sets)
 * so that the contract suite can hold both to one behaviour. JavaScript is single-threaded and every method runs
 * to completion without awaiting in between, which gives the same all-or-nothing atomicity a Lua script has.
 */
import {
  DEFAULT_RETENTION_GRACE_MS,
  SWEEP_BATCH,
  type CapacityEntry,
  type CapacityWrite,
  type CounterLimit,
  type CounterStore,
  type DenyReasonName,
  type ExpiryPolicy,
  type LimitState,
  type ReleaseCommand,
  type ReleaseResult,
  type ReleaseState,
  type ReserveCommand,
  type ReserveResult,
  type SourceState,
  type StateSnapshot,
} from "../../core/counter-store.ts";

type Hash = Map<string, string>;
type ZSet = Map<string, number>;
/** Per concurrency set: no slot expires before this (see #evaluate). */
const slotFloor = new WeakMap<ZSet, number>();

interface Reservation {
  expiresAt: number;
  policy: ExpiryPolicy;
  product: string;
  meters: Record<string, bigint>;
  /** `win`: the fixed-period window the parts were charged in. */
  entries: Array<{ limit: CounterLimit; parts: Array<[string, bigint]>; win: string }>;
}

interface Settled {
  /** A CANCEL that found nothing: a later reserve of that id is a no-op; a Release of it is NOT_FOUND. */
  tombstone?: true;
  state: ReleaseState;
  reserved: Record<string, bigint>;
  charged: Record<string, bigint>;
  overage: bigint;
}

interface AccountState {
  present: boolean;
  capacityVersion: number;
  cap: Map<string, CapacityEntry>;
  reservations: Map<string, Reservation>;
  settled: Map<string, Settled>;
  /** idempotency id -> the mode that recorded it and the reservation id. */
  idempotency: Map<string, { mode: "E" | "S"; reservationId: string; hash: string }>;
  /** Expiry index, as reserve.lua's: "r:<id>" reservation TTL, then its settled result's retention; "i:<id>"
   * idempotency retention. */
  expiry: ZSet;
  /** Min-heap over `expiry` (lazy: may hold stale pairs). */
  heap: Array<[number, string]>;
  hashes: Map<string, Hash>;
  zsets: Map<string, ZSet>;
}

const KIND_ORDER: Record<string, number> = { WINDOW: 0, RATE: 1, CONCURRENCY: 2, QUOTA: 3, BUDGET: 4 };
const REASON_BY_KIND: Record<string, DenyReasonName> = {
  WINDOW: "OUTSIDE_ACCESS_WINDOW",
  RATE: "RATE_LIMITED",
  CONCURRENCY: "CONCURRENCY_LIMITED",
  QUOTA: "QUOTA_EXHAUSTED",
  BUDGET: "BUDGET_EXHAUSTED",
};
const DAY_MS = 86_400_000;

interface Source extends SourceState {
  field: string;
  seq?: number;
}

interface Evaluation {
  pass: boolean;
  state: LimitState;
  retryAfterMs?: number;
  availableAt?: number;
  /** QUOTA/BUDGET: the sources in burn order, the hash and the overage field for this window. */
  sources?: Source[];
  hash?: Hash;
  overageField?: string;
  usageField?: string;
  /** Fixed periods: the window start containing now ("0" for periods that never reset). */
  win?: string;
  rolling?: boolean;
}

export interface InMemoryCounterStoreOptions {
  /** Overrides the store clock (tests). Default: Date.now. */
  clock?: () => number;
  /** How long past a reservation's TTL its settled result (and its idempotency id) is kept for replays. */
  retentionGraceMs?: number;
}

export class InMemoryCounterStore implements CounterStore {
  readonly #accounts = new Map<string, AccountState>();
  readonly #clock: () => number;
  readonly #grace: number;

  constructor(options: InMemoryCounterStoreOptions = {}) {
    this.#clock = options.clock ?? Date.now;
    this.#grace = options.retentionGraceMs ?? DEFAULT_RETENTION_GRACE_MS;
  }

  async reserve(cmd: ReserveCommand): Promise<ReserveResult> {
    const now = this.#clock();
    const acct = this.#accounts.get(cmd.accountId);
    if (!acct?.present) return { outcome: "NEED_RESTORE", overage: false, replayed: false, now, states: [] };
    this.#sweep(acct, now, SWEEP_BATCH);

    // The answer for a reservation already stored (open or settled): its outcome again, nothing applied.
    const replay = (id: string): ReserveResult => {
      const states = cmd.limits.map((l) => this.#evaluate(acct, { ...l, amount: 0n }, cmd.product, now).state);
      const r = acct.reservations.get(id);
      const done = acct.settled.get(id);
      const overage = r ? r.entries.some((e) => e.parts.some(([f]) => f.startsWith("o"))) : done ? done.overage > 0n : false;
      return { outcome: "ALLOWED", reservationId: id, overage, replayed: true, now, states };
    };
    if (cmd.mode !== "CHECK_ONLY") {
      if (acct.settled.get(cmd.reservationId)?.tombstone) return { outcome: "DENIED", overage: false, replayed: true, now, states: [] };
      if (acct.reservations.has(cmd.reservationId) || acct.settled.has(cmd.reservationId)) return replay(cmd.reservationId);
    }
    if (cmd.idempotencyId) {
      // A SHADOW decision never satisfies an enforcing call (it was not enforced); an enforced one satisfies every mode.
      const earlier = acct.idempotency.get(cmd.idempotencyId);
      // The same id for another request is an error, never the other request's answer (records without a hash match).
      if (earlier !== undefined && cmd.requestHash && earlier.hash && earlier.hash !== cmd.requestHash) {
        return { outcome: "IDEMPOTENCY_MISMATCH", overage: false, replayed: false, now, states: [] };
      }
      if (earlier !== undefined && (earlier.mode === "E" || cmd.mode === "SHADOW")) return replay(earlier.reservationId);
    }

    let denial: { reason: DenyReasonName; retryAfterMs?: number; availableAt?: number; limitId?: string } | undefined;
    for (const gate of cmd.gates) {
      if (gate.from !== undefined && now < gate.from) {
        denial = { reason: gate.reason, availableAt: gate.from, retryAfterMs: gate.from - now };
        break;
      }
      if (gate.until !== undefined && now >= gate.until) {
        denial = { reason: gate.reason };
        break;
      }
    }

    const evals = cmd.limits.map((l) => this.#evaluate(acct, l, cmd.product, now));
    if (!denial) {
      let worst = -1;
      evals.forEach((e, i) => {
        if (e.pass) return;
        const limit = cmd.limits[i]!;
        if (worst < 0 || KIND_ORDER[limit.kind]! < KIND_ORDER[cmd.limits[worst]!.kind]!) worst = i;
      });
      if (worst >= 0) {
        const e = evals[worst]!;
        const limit = cmd.limits[worst]!;
        e.state.exceeded = true;
        denial = { reason: REASON_BY_KIND[limit.kind]!, limitId: limit.id };
        if (e.retryAfterMs !== undefined) denial.retryAfterMs = e.retryAfterMs;
        if (e.availableAt !== undefined) denial.availableAt = e.availableAt;
      }
    }

    const base: ReserveResult = { outcome: "ALLOWED", overage: false, replayed: false, now, states: [] };
    if (denial) {
      if (denial.limitId !== undefined) base.deniedLimitId = denial.limitId;
      if (denial.retryAfterMs !== undefined) base.retryAfterMs = denial.retryAfterMs;
      if (denial.availableAt !== undefined) base.availableAt = denial.availableAt;
    }

    if (cmd.mode === "CHECK_ONLY" || (denial && cmd.mode === "ENFORCE")) {
      if (denial) {
        base.outcome = "DENIED";
        base.reason = denial.reason;
      }
      base.states = evals.map((e) => e.state);
      return base;
    }

    // ENFORCE allowed, or SHADOW: store the reservation; SHADOW-denied stores an empty one so Release still works.
    const reservation: Reservation = {
      expiresAt: now + cmd.ttlMs,
      policy: cmd.expiryPolicy,
      product: cmd.product,
      meters: {},
      entries: [],
    };
    if (denial) {
      base.shadowReason = denial.reason;
    } else {
      cmd.limits.forEach((limit, i) => {
        const e = evals[i]!;
        reservation.meters[limit.meter] = limit.amount;
        const parts = this.#apply(acct, limit, e, cmd.reservationId, now, reservation.expiresAt);
        if (parts.some(([f]) => f.startsWith("o"))) base.overage = true;
        reservation.entries.push({ limit, parts, win: e.win ?? "0" });
      });
    }
    acct.reservations.set(cmd.reservationId, reservation);
    setExpiry(acct, `r:${cmd.reservationId}`, reservation.expiresAt);
    if (cmd.idempotencyId) {
      acct.idempotency.set(cmd.idempotencyId, { mode: cmd.mode === "SHADOW" ? "S" : "E", reservationId: cmd.reservationId, hash: cmd.requestHash ?? "" });
      setExpiry(acct, `i:${cmd.idempotencyId}`, retentionOf(reservation.expiresAt, now, this.#grace));
    }
    base.reservationId = cmd.reservationId;
    // #apply and #consume keep `evals` current, so the answer needs no second evaluation.
    base.states = evals.map((e) => e.state);
    if (denial) base.states.forEach((s, i) => (s.exceeded = cmd.limits[i]!.id === denial.limitId));
    return base;
  }

  async release(cmd: ReleaseCommand): Promise<ReleaseResult> {
    const now = this.#clock();
    const acct = this.#account(cmd.accountId);
    const empty = { reserved: {}, charged: {}, overage: 0n };
    this.#sweep(acct, now, SWEEP_BATCH);
    const done = acct.settled.get(cmd.reservationId);
    if (done?.tombstone) return { outcome: "NOT_FOUND", ...empty };
    if (done) return { outcome: "REPLAYED", state: done.state, reserved: done.reserved, charged: done.charged, overage: done.overage };
    const reservation = acct.reservations.get(cmd.reservationId);
    if (!reservation) {
      if (cmd.outcome === "CANCEL") {
        // A CANCEL before its reserve (e.g. the reserve is still queued for a resend): a late reserve is a no-op.
        acct.settled.set(cmd.reservationId, { tombstone: true, state: "CANCELLED", reserved: {}, charged: {}, overage: 0n });
        setExpiry(acct, `r:${cmd.reservationId}`, now + this.#grace);
      }
      return { outcome: "NOT_FOUND", ...empty };
    }
    const settled = this.#settle(acct, cmd.reservationId, reservation, cmd.outcome === "COMMIT" ? "COMMITTED" : "CANCELLED", cmd.actual, now);
    return { outcome: "SETTLED", ...settled };
  }

  async setCapacity(accountId: string, entries: readonly CapacityEntry[], version = 0): Promise<CapacityWrite> {
    const acct = this.#accounts.get(accountId);
    // A sync never creates the account: if its state was lost, the next call must restore usage first.
    if (!acct?.present) return "absent";
    return this.#writeCapacity(acct, entries, version) ? "written" : "stale";
  }

  async capacityVersions(accountIds: readonly string[]): Promise<Map<string, number | null>> {
    return new Map(accountIds.map((id) => {
      const acct = this.#accounts.get(id);
      return [id, acct?.present ? acct.capacityVersion : null];
    }));
  }

  async restore(accountId: string, entries: readonly CapacityEntry[], states: StateSnapshot, version = 0): Promise<boolean> {
    const acct = this.#account(accountId);
    for (const [limitId, fields] of Object.entries(states)) {
      if (acct.hashes.has(limitId)) continue;
      acct.hashes.set(limitId, new Map(Object.entries(fields)));
    }
    return this.#writeCapacity(acct, entries, version);
  }

  #writeCapacity(acct: AccountState, entries: readonly CapacityEntry[], version: number): boolean {
    if (acct.present && acct.capacityVersion > version) return false;
    acct.cap = new Map(entries.map((e) => [e.limitId, structuredClone(e)]));
    acct.capacityVersion = version;
    acct.present = true;
    return true;
  }

  async exportState(accountId: string, limitIds: readonly string[]): Promise<StateSnapshot> {
    const out: StateSnapshot = {};
    const acct = this.#accounts.get(accountId);
    if (!acct) return out;
    for (const id of limitIds) {
      const h = acct.hashes.get(id);
      if (h && h.size > 0) out[id] = Object.fromEntries(h);
    }
    return out;
  }

  async sweep(accountId: string): Promise<number> {
    const acct = this.#accounts.get(accountId);
    return acct ? this.#sweep(acct, this.#clock(), 1000) : 0;
  }

  async sweepAndExport(accountId: string, limitIds: readonly string[]): Promise<{ settled: number; states: StateSnapshot }> {
    const settled = await this.sweep(accountId);
    return { settled, states: await this.exportState(accountId, limitIds) };
  }

  async now(): Promise<number> {
    return this.#clock();
  }

  async ping(): Promise<void> {}

  async close(): Promise<void> {}

  /** Test helper: drops everything, as a Redis restart without persistence would. */
  wipe(): void {
    this.#accounts.clear();
  }

  #account(accountId: string): AccountState {
    let acct = this.#accounts.get(accountId);
    if (!acct) {
      acct = {
        present: false,
        capacityVersion: 0,
        cap: new Map(),
        reservations: new Map(),
        settled: new Map(),
        idempotency: new Map(),
        expiry: new Map(),
        heap: [],
        hashes: new Map(),
        zsets: new Map(),
      };
      this.#accounts.set(accountId, acct);
    }
    return acct;
  }

  #zset(acct: AccountState, id: string): ZSet {
    let z = acct.zsets.get(id);
    if (!z) acct.zsets.set(id, (z = new Map()));
    return z;
  }

  #hash(acct: AccountState, id: string): Hash {
    let h = acct.hashes.get(id);
    if (!h) acct.hashes.set(id, (h = new Map()));
    return h;
  }

  #sweep(acct: AccountState, now: number, max: number): number {
    // The heap orders (score, member) pairs; entries whose member was removed or re-scored since are stale and
    // skipped. Same order as Redis ZRANGEBYSCORE: score, then member.
    const due: string[] = [];
    while (due.length < max && acct.heap.length > 0 && acct.heap[0]![0] <= now) {
      const [score, member] = heapPop(acct.heap);
      if (acct.expiry.get(member) === score) {
        acct.expiry.delete(member);
        due.push(member);
      }
    }
    let settled = 0;
    for (const member of due) {
      const id = member.slice(2);
      if (member.startsWith("r:")) {
        const r = acct.reservations.get(id);
        if (r) {
          this.#settle(acct, id, r, r.policy === "charge" ? "EXPIRED_CHARGED" : "EXPIRED_REFUNDED", {}, now);
          settled++;
        } else {
          acct.settled.delete(id);
        }
      } else {
        acct.idempotency.delete(id);
      }
    }
    return settled;
  }


  #evaluate(acct: AccountState, limit: CounterLimit, product: string, now: number): Evaluation {
    switch (limit.kind) {
      case "WINDOW": {
        const tod = now % DAY_MS;
        let open = false;
        let closesAt = 0;
        let nextOpen = Infinity;
        for (const [s, e] of limit.blocks ?? []) {
          if (tod >= s && tod < e) {
            open = true;
            closesAt = Math.max(closesAt, now - tod + e);
          }
          const delta = s > tod ? s - tod : s + DAY_MS - tod;
          nextOpen = Math.min(nextOpen, delta);
        }
        const state: LimitState = { limit: 0n, used: 0n, remaining: 0n, overage: 0n, exceeded: false };
        if (open) return { pass: true, state: { ...state, resetAt: closesAt } };
        if (nextOpen === Infinity) return { pass: false, state };
        return { pass: false, state: { ...state, resetAt: now + nextOpen }, retryAfterMs: nextOpen, availableAt: now + nextOpen };
      }
      case "RATE": {
        const z = this.#zset(acct, limit.id);
        const windowMs = limit.windowMs!;
        // Calls are appended in time order (Map keeps insertion order): prune from the front; the first is the oldest.
        for (const [m, score] of z) {
          if (score > now - windowMs) break;
          z.delete(m);
        }
        const count = BigInt(z.size);
        const max = limit.limit!;
        const pass = count + limit.amount <= max;
        const oldest: number | undefined = z.values().next().value;
        const used = count;
        const state: LimitState = {
          limit: max,
          used,
          remaining: max > used ? max - used : 0n,
          resetAt: oldest !== undefined ? oldest + windowMs : now + windowMs,
          overage: 0n,
          exceeded: false,
        };
        const ev: Evaluation = { pass, state };
        if (!pass) ev.retryAfterMs = oldest !== undefined ? Math.max(1, oldest + windowMs - now) : windowMs;
        return ev;
      }
      case "CONCURRENCY": {
        const z = this.#zset(acct, limit.id);
        // Expired slots are dropped by a scan only when one can be due: `slotFloor` is a lower bound of the scores
        // (exact after a scan, lowered by each new slot, still a bound after a release), so the common call does
        // not walk every open reservation (Redis does the same in O(log n) with ZREMRANGEBYSCORE).
        const floor = slotFloor.get(z);
        if (floor === undefined || floor <= now) {
          let min = Infinity;
          for (const [m, score] of z) {
            if (score <= now) z.delete(m);
            else if (score < min) min = score;
          }
          slotFloor.set(z, min);
        }
        const count = BigInt(z.size);
        const max = limit.limit!;
        const pass = count + limit.amount <= max;
        const state: LimitState = { limit: max, used: count, remaining: max > count ? max - count : 0n, overage: 0n, exceeded: false };
        const ev: Evaluation = { pass, state };
        if (!pass) {
          let earliest = Infinity;
          for (const score of z.values()) if (score < earliest) earliest = score;
          if (earliest === Infinity) earliest = now + 1000;
          ev.retryAfterMs = Math.max(1, earliest - now);
        }
        return ev;
      }
      case "QUOTA":
      case "BUDGET":
        return this.#evaluateQuota(acct, limit, product, now);
    }
  }

  #evaluateQuota(acct: AccountState, limit: CounterLimit, product: string, now: number): Evaluation {
    const hash = this.#hash(acct, limit.id);
    const period = limit.period ?? { type: "none" as const };
    const cap: CapacityEntry = limit.limit !== undefined
      ? { limitId: limit.id, base: limit.limit, basePriority: 0, grants: [] }
      : acct.cap.get(limit.id) ?? { limitId: limit.id, base: 0n, basePriority: 0, grants: [] };

    let resetAt: number | undefined;
    let win = "0";
    let used = 0n;
    let overageField = "o";
    let usageField: string | undefined;
    let rolling = false;
    if (period.type === "fixed") {
      const b = period.bounds;
      let i = 1;
      for (let j = 0; j < 3; j++) if (b[j]! <= now && now < b[j + 1]!) i = j;
      win = String(b[i]);
      resetAt = b[i + 1];
    } else if (period.type === "rolling") {
      rolling = true;
      const bucket = Math.floor(now / period.bucketMs) * period.bucketMs;
      const horizon = now - period.windowMs - period.bucketMs;
      let oldest: number | undefined;
      for (const [f, v] of hash) {
        if (!f.startsWith("b:") && !f.startsWith("o:")) continue;
        const start = Number(f.slice(2));
        if (start <= horizon) {
          hash.delete(f);
          continue;
        }
        if (f.startsWith("b:")) {
          used += BigInt(v);
          if (BigInt(v) > 0n && (oldest === undefined || start < oldest)) oldest = start;
        }
      }
      usageField = `b:${bucket}`;
      overageField = `o:${bucket}`;
      resetAt = oldest !== undefined ? oldest + period.bucketMs + period.windowMs : now + period.windowMs;
    }
    const sameWindow = hash.get("win") === win;

    const sources: Source[] = [];
    if (cap.base > 0n || cap.grants.length === 0) {
      const s: Source = {
        id: "base",
        field: rolling ? usageField! : "b",
        amount: cap.base,
        used: rolling ? 0n : sameWindow ? BigInt(hash.get("b") ?? "0") : 0n,
        priority: cap.basePriority,
        product: "",
      };
      if (resetAt !== undefined && !rolling) s.expiresAt = resetAt;
      sources.push(s);
    }
    for (const g of cap.grants) {
      if (g.validFrom > now || (g.validUntil !== undefined && now >= g.validUntil)) continue;
      if (g.product !== "" && g.product !== product) continue;
      const s: Source = {
        id: g.id,
        field: rolling ? usageField! : `g:${g.id}`,
        amount: g.amount,
        used: rolling ? 0n : BigInt(hash.get(`g:${g.id}`) ?? "0"),
        priority: g.priority,
        product: g.product,
      };
      if (g.validUntil !== undefined) s.expiresAt = g.validUntil;
      s.seq = g.seq;
      sources.push(s);
    }
    sources.sort(burnOrder);

    let total = 0n;
    let remaining = 0n;
    for (const s of sources) {
      total += s.amount;
      if (!rolling) {
        used += s.used;
        remaining += s.amount > s.used ? s.amount - s.used : 0n;
      }
    }
    if (rolling) remaining = total > used ? total - used : 0n;
    let overage = 0n;
    if (rolling) {
      for (const [f, v] of hash) if (f.startsWith("o:")) overage += BigInt(v);
    } else if (sameWindow) {
      overage = BigInt(hash.get("o") ?? "0");
    }

    // A budget is exhausted once spend reaches it: every call fails then, a zero-cost one too (0 <= 0 must not pass).
    const pass = (limit.amount <= remaining || (limit.kind === "QUOTA" && limit.overage === true)) && !(limit.kind === "BUDGET" && remaining <= 0n);
    const state: LimitState = { limit: total, used, remaining, overage, overageTotal: BigInt(hash.get("ot") ?? "0"), exceeded: false, sources: sources.map(publicSource) };
    if (resetAt !== undefined) state.resetAt = resetAt;
    const ev: Evaluation = { pass, state, sources, hash, overageField, win, rolling };
    if (usageField) ev.usageField = usageField;
    if (!pass && resetAt !== undefined) ev.retryAfterMs = Math.max(1, resetAt - now);
    return ev;
  }

  /** Applies an evaluated limit; returns the parts consumed (field, amount) for the reservation. */
  #apply(acct: AccountState, limit: CounterLimit, ev: Evaluation, reservationId: string, now: number, expiresAt: number): Array<[string, bigint]> {
    if (limit.amount === 0n) return [];
    switch (limit.kind) {
      case "WINDOW":
        return [];
      case "RATE":
        this.#zset(acct, limit.id).set(reservationId, now);
        bump(ev.state);
        if (ev.state.used === 1n) ev.state.resetAt = now + limit.windowMs!;
        return [];
      case "CONCURRENCY":
        const z = this.#zset(acct, limit.id);
        z.set(reservationId, expiresAt);
        const floor = slotFloor.get(z);
        if (floor !== undefined && expiresAt < floor) slotFloor.set(z, expiresAt);
        bump(ev.state);
        return [["slot", 1n]];
      default:
        return this.#consume(ev, limit.amount);
    }
  }

  /** Takes `amount` from the sources in burn order; what no source can cover becomes overage. */
  #consume(ev: Evaluation, amount: bigint): Array<[string, bigint]> {
    const hash = ev.hash!;
    if (!ev.rolling && hash.get("win") !== ev.win) {
      hash.set("win", ev.win!);
      hash.set("b", "0");
      hash.set("o", "0");
    }
    const parts: Array<[string, bigint]> = [];
    let take = amount;
    if (ev.rolling) {
      const room = ev.state.remaining < take ? ev.state.remaining : take;
      if (room > 0n) {
        incr(hash, ev.usageField!, room);
        parts.push([ev.usageField!, room]);
        take -= room;
      }
    } else {
      for (const s of ev.sources!) {
        if (take === 0n) break;
        const avail = s.amount - s.used;
        if (avail <= 0n) continue;
        const t = avail < take ? avail : take;
        incr(hash, s.field, t);
        s.used += t;
        parts.push([s.field, t]);
        take -= t;
      }
    }
    if (take > 0n) {
      // "ot" never resets: overage units ever charged on this limit, for billing.
      incr(hash, ev.overageField!, take);
      incr(hash, "ot", take);
      parts.push([ev.overageField!, take]);
    }
    // Keep the evaluation current, so the answer reports the state after this call without evaluating again.
    const within = amount - take;
    const st = ev.state;
    st.used += within;
    st.remaining = st.remaining > within ? st.remaining - within : 0n;
    st.overage += take;
    st.overageTotal = (st.overageTotal ?? 0n) + take;
    if (st.sources && ev.sources) st.sources = ev.sources.map(publicSource);
    return parts;
  }

  #settle(acct: AccountState, id: string, r: Reservation, state: ReleaseState, actual: Readonly<Record<string, bigint>>, now: number): Settled {
    const charged: Record<string, bigint> = {};
    for (const [meter, reserved] of Object.entries(r.meters)) {
      charged[meter] = state === "COMMITTED" ? (actual[meter] ?? reserved) : state === "EXPIRED_CHARGED" ? reserved : 0n;
    }
    let overage = 0n;
    for (const { limit, parts, win } of r.entries) {
      if (limit.kind === "CONCURRENCY") acct.zsets.get(limit.id)?.delete(id);
      if (limit.kind !== "QUOTA" && limit.kind !== "BUDGET") continue;
      const reserved = parts.reduce((s, [, a]) => s + a, 0n);
      const target = charged[limit.meter] ?? reserved;
      const hash = this.#hash(acct, limit.id);
      let entryOverage = parts.filter(([f]) => f.startsWith("o")).reduce((s, [, a]) => s + a, 0n);
      if (target < reserved) {
        let refund = reserved - target;
        for (let i = parts.length - 1; i >= 0 && refund > 0n; i--) {
          const [field, amount] = parts[i]!;
          const back = amount < refund ? amount : refund;
          refund -= back;
          if (field.startsWith("o")) {
            entryOverage -= back;
            incr(hash, "ot", -back);
          }
          // A part of a window that has since rolled over is not refunded: that window's usage is history.
          if (!hash.has(field) || ((field === "b" || field === "o") && hash.get("win") !== win)) continue;
          incr(hash, field, -back);
        }
      } else if (target > reserved) {
        const ev = this.#evaluateQuota(acct, { ...limit, amount: target - reserved }, r.product, now);
        const extra = this.#consume(ev, target - reserved);
        entryOverage += extra.filter(([f]) => f.startsWith("o")).reduce((s, [, a]) => s + a, 0n);
      }
      if (entryOverage > overage) overage = entryOverage;
    }
    acct.reservations.delete(id);
    const settled: Settled = { state, reserved: { ...r.meters }, charged, overage };
    acct.settled.set(id, settled);
    setExpiry(acct, `r:${id}`, retentionOf(r.expiresAt, now, this.#grace));
    return settled;
  }
}

/** Settled results are kept `grace` ms past the reservation's TTL (or past now, if later): bounded memory. */
function retentionOf(expiresAt: number, now: number, grace: number): number {
  return Math.max(expiresAt, now) + grace;
}

function setExpiry(acct: AccountState, member: string, score: number): void {
  acct.expiry.set(member, score);
  heapPush(acct.heap, [score, member]);
}

const before = (a: [number, string], b: [number, string]) => a[0] < b[0] || (a[0] === b[0] && a[1] < b[1]);

function heapPush(h: Array<[number, string]>, item: [number, string]): void {
  h.push(item);
  for (let i = h.length - 1; i > 0; ) {
    const parent = (i - 1) >> 1;
    if (!before(h[i]!, h[parent]!)) break;
    [h[i], h[parent]] = [h[parent]!, h[i]!];
    i = parent;
  }
}

function heapPop(h: Array<[number, string]>): [number, string] {
  const top = h[0]!;
  const last = h.pop()!;
  if (h.length > 0) {
    h[0] = last;
    for (let i = 0; ; ) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < h.length && before(h[l]!, h[m]!)) m = l;
      if (r < h.length && before(h[r]!, h[m]!)) m = r;
      if (m === i) break;
      [h[i], h[m]] = [h[m]!, h[i]!];
      i = m;
    }
  }
  return top;
}

function bump(state: LimitState): void {
  state.used += 1n;
  state.remaining = state.remaining > 0n ? state.remaining - 1n : 0n;
}

function incr(hash: Hash, field: string, by: bigint): void {
  hash.set(field, String(BigInt(hash.get(field) ?? "0") + by));
}

function burnOrder(a: Source, b: Source): number {
  if (a.priority !== b.priority) return b.priority - a.priority;
  const ea = a.expiresAt ?? Infinity;
  const eb = b.expiresAt ?? Infinity;
  if (ea !== eb) return ea - eb;
  const sa = a.seq ?? -1;
  const sb = b.seq ?? -1;
  if (sa !== sb) return sa - sb;
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}

function publicSource(s: Source): SourceState {
  const out: SourceState = { id: s.id, amount: s.amount, used: s.used, priority: s.priority, product: s.product };
  if (s.expiresAt !== undefined) out.expiresAt = s.expiresAt;
  return out;
}
