/**
 * Property-based test of the CounterStore contract: random sequences of reserve / release / clock moves, run
 * against a store and against a deliberately plain reference model; after every step the decision (and its deny
 * reason and limit), the Release outcome and every counter must agree. Run for both stores
 * (redis-counter-store.test.ts, in-memory-counter-store.test.ts).
 *
 * What one account carries, all at once:
 * - a fixed-period QUOTA (monthly window that a "rollover" op crosses) with a base and three grants — burn order by
 *   priority, then earliest expiry, then oldest; one grant restricted to a product, one that expires mid-run — and
 *   calls with or without overage;
 * - a rolling-window QUOTA (buckets: usage counts until its whole bucket leaves the window);
 * - a BUDGET funded by two deposits (oldest burnt first), never resetting;
 * - a RATE and a CONCURRENCY limit;
 * - every call in ENFORCE, CHECK_ONLY or SHADOW; reservations expiring by "charge" or "refund"; idempotency ids
 *   that replay; Release with COMMIT (actual amounts above or below the reservation) or CANCEL; settled results
 *   kept for the retention grace past the reservation's TTL (or its settlement, if later); at most SWEEP_BATCH expired entries settled per call.
 *
 * Shrinking is on (a failure is reported as a minimal sequence); the seed is printed on failure, and
 * PROPERTY_SEED=<n> replays it; PROPERTY_RUNS=<n> runs more cases (a nightly-style run).
 */
import fc from "fast-check";
import { describe, expect, it, onTestFailed } from "vitest";
import { DEFAULT_RETENTION_GRACE_MS, SWEEP_BATCH, type CapacityEntry, type CounterLimit, type CounterStore, type DenyReasonName, type Mode } from "../../src/core/counter-store.ts";
import { ManualClock, T0, uniqueId } from "../support/env.ts";

const DAY = 86_400_000;
const TTL_MIN = 2000;
const RATE_LIMIT = 4;
const RATE_WINDOW = 1000;
const SLOTS = 3;
const ROLL_WINDOW = 10_000;
const ROLL_BUCKET = 2000;
const ROLL_CAP = 12;
/** The quota's monthly window boundary: a "rollover" op moves the clock just past it (once). */
const ROLL_AT = T0 + 30 * DAY;
const BOUNDS = [T0 - 2 * DAY, T0 - DAY, ROLL_AT, T0 + 60 * DAY] as const;

interface Grant {
  id: string;
  amount: number;
  priority: number;
  validUntil?: number;
  seq: number;
  product: string;
}
const Q_BASE = 20;
const Q_BASE_PRIORITY = 100;
const Q_GRANTS: Grant[] = [
  { id: "g-hi", amount: 5, priority: 200, seq: 1, product: "p" }, // first, for product "p" only
  { id: "g-soon", amount: 6, priority: 100, validUntil: T0 + 40_000, seq: 2, product: "" }, // ties the base: expires first
  { id: "g-lo", amount: 4, priority: 50, seq: 3, product: "" }, // last
];
const B_GRANTS: Grant[] = [
  { id: "d-1", amount: 15, priority: 0, seq: 1, product: "" },
  { id: "d-2", amount: 10, priority: 0, seq: 2, product: "" },
];

const Q = "s:p:q";
const R = "k:p:roll";
const B = "a::credit";
const RATE = "k:p:rate";
const SLOT = "k:p:slots";

type ReserveOp = {
  kind: "reserve";
  mode: Mode;
  product: "p" | "x";
  q: number | null;
  overage: boolean;
  r: number | null;
  b: number | null;
  rate: boolean;
  slot: boolean;
  ttl: number;
  policy: "charge" | "refund";
  idem: number | null;
};
type Op =
  | ReserveOp
  | { kind: "release"; pick: number; cancel: boolean; units: number | null; tokens: number | null; spend: number | null }
  | { kind: "advance"; ms: number }
  | { kind: "rollover" };

const amount = (max: number) => fc.option(fc.integer({ min: 1, max }), { nil: null, freq: 2 });
const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      kind: fc.constant("reserve" as const),
      mode: fc.constantFrom<Mode>("ENFORCE", "ENFORCE", "ENFORCE", "CHECK_ONLY", "SHADOW"),
      product: fc.constantFrom<"p" | "x">("p", "x"),
      q: amount(12),
      overage: fc.boolean(),
      r: amount(6),
      b: amount(9),
      rate: fc.boolean(),
      slot: fc.boolean(),
      ttl: fc.constantFrom(TTL_MIN, 5000),
      policy: fc.constantFrom<"charge" | "refund">("charge", "refund"),
      idem: fc.option(fc.integer({ min: 0, max: 2 }), { nil: null, freq: 2 }),
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      kind: fc.constant("release" as const),
      pick: fc.nat(),
      cancel: fc.boolean(),
      units: fc.option(fc.integer({ min: 0, max: 16 }), { nil: null }),
      tokens: fc.option(fc.integer({ min: 0, max: 8 }), { nil: null }),
      spend: fc.option(fc.integer({ min: 0, max: 14 }), { nil: null }),
    }),
  },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant("advance" as const), ms: fc.oneof(fc.integer({ min: 1, max: 3000 }), fc.constantFrom(ROLL_BUCKET, TTL_MIN, DEFAULT_RETENTION_GRACE_MS)) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("rollover" as const) }) },
);

// ------------------------------------------------------------------ the reference model: plain numbers

type Part = [field: string, amount: number, win: number];
interface Entry {
  limit: "q" | "r" | "b";
  meter: "units" | "tokens" | "spend";
  parts: Part[];
}
interface Reservation {
  expires: number;
  policy: "charge" | "refund";
  product: string;
  meters: Record<string, number>;
  entries: Entry[];
  slot: boolean;
}
type State = "COMMITTED" | "CANCELLED" | "EXPIRED_CHARGED" | "EXPIRED_REFUNDED";

class Model {
  // fixed quota: per-window base and overage (window 0 before ROLL_AT, 1 after), grants used (never reset)
  qBase = [0, 0];
  qOver = [0, 0];
  qGrant = new Map<string, number>();
  // rolling quota: usage and overage per bucket start
  rUsed = new Map<number, number>();
  rOver = new Map<number, number>();
  // budget: grants used, overage
  bGrant = new Map<string, number>();
  bOver = 0;
  rate: number[] = [];
  slots = new Map<string, number>(); // reservation -> expiry
  open = new Map<string, Reservation>();
  settled = new Map<string, State>();
  /** idempotency id -> the reservation that recorded it, and whether it was enforced (a SHADOW one satisfies only SHADOW). */
  idem = new Map<string, string>();
  idemShadow = new Set<string>();
  /** The stores' expiry index: "r:<id>" TTL, "d:<id>" settled retention, "i:<key>" idempotency retention. */
  expiry = new Map<string, number>();

  win(now: number): number {
    return now >= ROLL_AT ? 1 : 0;
  }

  sweep(now: number): void {
    const due = [...this.expiry].filter(([, s]) => s <= now).sort(([ma, a], [mb, b]) => a - b || (ma < mb ? -1 : ma > mb ? 1 : 0));
    for (const [member] of due.slice(0, SWEEP_BATCH)) {
      this.expiry.delete(member);
      const id = member.slice(2);
      if (member.startsWith("r:")) {
        const r = this.open.get(id);
        if (r) this.settle(id, r, r.policy === "charge" ? "EXPIRED_CHARGED" : "EXPIRED_REFUNDED", {}, now);
      } else if (member.startsWith("d:")) this.settled.delete(id);
      else {
        this.idem.delete(id);
        this.idemShadow.delete(id);
      }
    }
  }

  /** Sources of the fixed quota for a product at `now`, in burn order, with what each has left. */
  qSources(product: string, now: number): Array<{ field: string; left: number }> {
    const w = this.win(now);
    const baseExpires = BOUNDS[w + 2]!;
    const list = [{ field: "b", priority: Q_BASE_PRIORITY, expires: baseExpires, seq: -1, left: Q_BASE - this.qBase[w]! }];
    for (const g of Q_GRANTS) {
      if (g.validUntil !== undefined && now >= g.validUntil) continue;
      if (g.product !== "" && g.product !== product) continue;
      list.push({ field: `g:${g.id}`, priority: g.priority, expires: g.validUntil ?? Infinity, seq: g.seq, left: g.amount - (this.qGrant.get(g.id) ?? 0) });
    }
    list.sort((a, b) => b.priority - a.priority || a.expires - b.expires || a.seq - b.seq);
    return list;
  }
  qUsed(product: string, now: number): number {
    const w = this.win(now);
    let used = this.qBase[w]!;
    for (const g of Q_GRANTS) {
      if (g.validUntil !== undefined && now >= g.validUntil) continue;
      if (g.product !== "" && g.product !== product) continue;
      used += this.qGrant.get(g.id) ?? 0;
    }
    return used;
  }
  qRemaining(product: string, now: number): number {
    return this.qSources(product, now).reduce((s, x) => s + Math.max(0, x.left), 0);
  }
  live(bucket: number, now: number): boolean {
    return bucket > now - ROLL_WINDOW - ROLL_BUCKET;
  }
  rSum(m: Map<number, number>, now: number): number {
    let s = 0;
    for (const [b, v] of m) if (this.live(b, now)) s += v;
    return s;
  }
  bRemaining(): number {
    return B_GRANTS.reduce((s, g) => s + g.amount - (this.bGrant.get(g.id) ?? 0), 0);
  }
  bUsed(): number {
    return [...this.bGrant.values()].reduce((s, v) => s + v, 0);
  }

  consume(limit: "q" | "r" | "b", take: number, product: string, now: number): Part[] {
    const parts: Part[] = [];
    const w = this.win(now);
    if (limit === "q") {
      for (const s of this.qSources(product, now)) {
        if (take === 0) break;
        if (s.left <= 0) continue;
        const t = Math.min(s.left, take);
        if (s.field === "b") this.qBase[w]! += t;
        else this.qGrant.set(s.field.slice(2), (this.qGrant.get(s.field.slice(2)) ?? 0) + t);
        parts.push([s.field, t, w]);
        take -= t;
      }
      if (take > 0) {
        this.qOver[w]! += take;
        parts.push(["o", take, w]);
      }
    } else if (limit === "r") {
      const bucket = Math.floor(now / ROLL_BUCKET) * ROLL_BUCKET;
      const room = Math.min(Math.max(0, ROLL_CAP - this.rSum(this.rUsed, now)), take);
      if (room > 0) {
        this.rUsed.set(bucket, (this.rUsed.get(bucket) ?? 0) + room);
        parts.push([`b:${bucket}`, room, w]);
        take -= room;
      }
      if (take > 0) {
        this.rOver.set(bucket, (this.rOver.get(bucket) ?? 0) + take);
        parts.push([`o:${bucket}`, take, w]);
      }
    } else {
      for (const g of B_GRANTS) {
        if (take === 0) break;
        const left = g.amount - (this.bGrant.get(g.id) ?? 0);
        if (left <= 0) continue;
        const t = Math.min(left, take);
        this.bGrant.set(g.id, (this.bGrant.get(g.id) ?? 0) + t);
        parts.push([`g:${g.id}`, t, w]);
        take -= t;
      }
      if (take > 0) {
        this.bOver += take;
        parts.push(["o", take, w]);
      }
    }
    return parts;
  }

  refund(e: Entry, back: number, part: Part): void {
    const [field, , win] = part;
    if (e.limit === "q") {
      // A part charged in a window that has since rolled over goes back to that window: history nobody reads.
      if (field === "b" || field === "o") {
        if (field === "b") this.qBase[win]! -= back;
        else this.qOver[win]! -= back;
      } else this.qGrant.set(field.slice(2), this.qGrant.get(field.slice(2))! - back);
    } else if (e.limit === "r") {
      const m = field.startsWith("b:") ? this.rUsed : this.rOver;
      const bucket = Number(field.slice(2));
      m.set(bucket, m.get(bucket)! - back);
    } else if (field === "o") this.bOver -= back;
    else this.bGrant.set(field.slice(2), this.bGrant.get(field.slice(2))! - back);
  }

  reserve(id: string, op: ReserveOp, now: number): { outcome: "ALLOWED" | "DENIED"; reason?: DenyReasonName; limitId?: string; shadowReason?: DenyReasonName; replayOf?: string } {
    this.sweep(now);
    const idemKey = op.idem === null ? undefined : `k${op.idem}`;
    // An enforced record satisfies every mode; a SHADOW record only a later SHADOW call (it was never enforced).
    if (idemKey !== undefined && this.idem.has(idemKey) && (!this.idemShadow.has(idemKey) || op.mode === "SHADOW")) return { outcome: "ALLOWED", replayOf: this.idem.get(idemKey)! };
    this.rate = this.rate.filter((t) => t > now - RATE_WINDOW);
    for (const [rid, e] of this.slots) if (e <= now) this.slots.delete(rid);
    // Failing limits in the stores' order of kinds: RATE, CONCURRENCY, QUOTA, BUDGET (quota: fixed before rolling).
    const failing: Array<[DenyReasonName, string]> = [];
    if (op.rate && this.rate.length + 1 > RATE_LIMIT) failing.push(["RATE_LIMITED", RATE]);
    if (op.slot && this.slots.size + 1 > SLOTS) failing.push(["CONCURRENCY_LIMITED", SLOT]);
    if (op.q !== null && !op.overage && op.q > this.qRemaining(op.product, now)) failing.push(["QUOTA_EXHAUSTED", Q]);
    if (op.r !== null && op.r > Math.max(0, ROLL_CAP - this.rSum(this.rUsed, now))) failing.push(["QUOTA_EXHAUSTED", R]);
    if (op.b !== null && op.b > this.bRemaining()) failing.push(["BUDGET_EXHAUSTED", B]);
    const denial = failing[0];
    if (op.mode === "CHECK_ONLY" || (denial && op.mode === "ENFORCE")) {
      return denial ? { outcome: "DENIED", reason: denial[0], limitId: denial[1] } : { outcome: "ALLOWED" };
    }
    const r: Reservation = { expires: now + op.ttl, policy: op.policy, product: op.product, meters: {}, entries: [], slot: false };
    if (!denial) {
      if (op.rate) this.rate.push(now);
      if (op.slot) {
        this.slots.set(id, now + op.ttl);
        r.slot = true;
      }
      for (const [limit, meter, amt] of [["q", "units", op.q], ["r", "tokens", op.r], ["b", "spend", op.b]] as const) {
        if (amt === null) continue;
        r.meters[meter] = amt;
        r.entries.push({ limit, meter, parts: this.consume(limit, amt, op.product, now) });
      }
    }
    this.open.set(id, r);
    this.expiry.set(`r:${id}`, r.expires);
    if (idemKey !== undefined) {
      this.idem.set(idemKey, id);
      if (op.mode === "SHADOW") this.idemShadow.add(idemKey);
      else this.idemShadow.delete(idemKey);
      this.expiry.set(`i:${idemKey}`, r.expires + DEFAULT_RETENTION_GRACE_MS);
    }
    return denial ? { outcome: "ALLOWED", shadowReason: denial[0] } : { outcome: "ALLOWED" };
  }

  settle(id: string, r: Reservation, state: State, actual: Record<string, number>, now: number): void {
    for (const e of r.entries) {
      const reserved = e.parts.reduce((s, [, a]) => s + a, 0);
      const target = state === "COMMITTED" ? (actual[e.meter] ?? reserved) : state === "EXPIRED_CHARGED" ? reserved : 0;
      if (target < reserved) {
        let refund = reserved - target;
        for (let i = e.parts.length - 1; i >= 0 && refund > 0; i--) {
          const back = Math.min(e.parts[i]![1], refund);
          refund -= back;
          this.refund(e, back, e.parts[i]!);
        }
      } else if (target > reserved) {
        this.consume(e.limit, target - reserved, r.product, now);
      }
    }
    if (r.slot) this.slots.delete(id);
    this.open.delete(id);
    this.expiry.delete(`r:${id}`);
    this.settled.set(id, state);
    // Kept for the grace past the later of the reservation's TTL end and its settlement (ADR 18).
    this.expiry.set(`d:${id}`, Math.max(r.expires, now) + DEFAULT_RETENTION_GRACE_MS);
  }

  release(id: string, cancel: boolean, actual: Record<string, number>, now: number): { outcome: "SETTLED" | "REPLAYED" | "NOT_FOUND"; state?: State } {
    this.sweep(now);
    const done = this.settled.get(id);
    if (done) return { outcome: "REPLAYED", state: done };
    const r = this.open.get(id);
    if (!r) return { outcome: "NOT_FOUND" };
    const state: State = cancel ? "CANCELLED" : "COMMITTED";
    this.settle(id, r, state, actual, now);
    return { outcome: "SETTLED", state };
  }
}

// ------------------------------------------------------------------ the property

const fixed = (amount: bigint, overage = false): CounterLimit => ({ id: Q, kind: "QUOTA", meter: "units", amount, overage, period: { type: "fixed", bounds: BOUNDS } });
const rolling = (amount: bigint): CounterLimit => ({ id: R, kind: "QUOTA", meter: "tokens", amount, period: { type: "rolling", windowMs: ROLL_WINDOW, bucketMs: ROLL_BUCKET } });
const budget = (amount: bigint): CounterLimit => ({ id: B, kind: "BUDGET", meter: "spend", amount, period: { type: "none" } });
const capacity: CapacityEntry[] = [
  { limitId: Q, base: BigInt(Q_BASE), basePriority: Q_BASE_PRIORITY, grants: Q_GRANTS.map((g) => ({ id: g.id, amount: BigInt(g.amount), priority: g.priority, validFrom: T0 - DAY, ...(g.validUntil !== undefined ? { validUntil: g.validUntil } : {}), seq: g.seq, product: g.product })) },
  { limitId: R, base: BigInt(ROLL_CAP), basePriority: 100, grants: [] },
  { limitId: B, base: 0n, basePriority: 0, grants: B_GRANTS.map((g) => ({ id: g.id, amount: BigInt(g.amount), priority: g.priority, validFrom: T0 - DAY, seq: g.seq, product: g.product })) },
];

/** Runs per store: the default, or PROPERTY_RUNS for a longer run. */
export function propertyRuns(defaultRuns: number): number {
  return process.env.PROPERTY_RUNS ? Number(process.env.PROPERTY_RUNS) : defaultRuns;
}

/**
 * Splits a sequence into the steps one run makes: one op each, or (grouped) each run of consecutive reserves and each
 * run of consecutive releases as one step, whose calls are all made in the same tick without waiting, so a store that
 * groups an account's calls of a tick (RedisCounterStore: one script call) decides them together. The model still
 * takes them one after another, in order: a group must decide exactly as the same calls made one by one.
 */
function stepsOf(ops: Op[], grouped: boolean): Op[][] {
  if (!grouped) return ops.map((op) => [op]);
  const steps: Op[][] = [];
  for (const op of ops) {
    const last = steps[steps.length - 1];
    if (last && (op.kind === "reserve" || op.kind === "release") && last[0]!.kind === op.kind) last.push(op);
    else steps.push([op]);
  }
  return steps;
}

export function describeCounterStoreProperties(name: string, factory: (clock: () => number) => Promise<{ store: CounterStore; cleanup(): Promise<void> }>, numRuns: number): void {
  describe(`CounterStore properties: ${name}`, () => {
    for (const grouped of [false, true]) {
      const title = grouped
        ? `agrees with the reference model when runs of calls are made in one tick (grouped; ${numRuns} runs)`
        : `agrees with the reference model on random sequences (${numRuns} runs)`;
      it(title, async () => {
        const seed = process.env.PROPERTY_SEED ? Number(process.env.PROPERTY_SEED) : Math.floor(Math.random() * 2 ** 31);
        onTestFailed(() => {
          process.stderr.write(`\nCounterStore property (${name}${grouped ? ", grouped" : ""}) failed with seed ${seed}: replay with PROPERTY_SEED=${seed}\n`);
        });
        const clock = new ManualClock();
        const { store, cleanup } = await factory(clock.now);
        try {
          await fc.assert(
            fc.asyncProperty(fc.array(opArb, { minLength: 1, maxLength: 40 }), async (ops) => {
              clock.set(T0);
              const account = uniqueId("prop");
              await store.restore(account, capacity, {});
              const model = new Model();
              const ids: string[] = [];
              let n = 0;
              for (const step of stepsOf(ops, grouped)) {
                const first = step[0]!;
                if (first.kind === "advance") {
                  clock.advance(first.ms);
                  continue;
                }
                if (first.kind === "rollover") {
                  if (clock.now() < ROLL_AT) clock.set(ROLL_AT + 1);
                  continue;
                }
                const now = clock.now();
                if (first.kind === "reserve") {
                  const calls = (step as Array<Extract<Op, { kind: "reserve" }>>).map((op) => {
                    const id = `r${n++}`;
                    const limits: CounterLimit[] = [];
                    if (op.q !== null) limits.push(fixed(BigInt(op.q), op.overage));
                    if (op.r !== null) limits.push(rolling(BigInt(op.r)));
                    if (op.b !== null) limits.push(budget(BigInt(op.b)));
                    if (op.rate) limits.push({ id: RATE, kind: "RATE", meter: "calls", amount: 1n, limit: BigInt(RATE_LIMIT), windowMs: RATE_WINDOW });
                    if (op.slot) limits.push({ id: SLOT, kind: "CONCURRENCY", meter: "calls", amount: 1n, limit: BigInt(SLOTS) });
                    const answer = store.reserve({
                      accountId: account,
                      reservationId: id,
                      ...(op.idem !== null ? { idempotencyId: `k${op.idem}` } : {}),
                      mode: op.mode,
                      ttlMs: op.ttl,
                      product: op.product,
                      expiryPolicy: op.policy,
                      gates: [],
                      limits,
                    });
                    return { op, id, answer };
                  });
                  const answers = await Promise.all(calls.map((c) => c.answer));
                  calls.forEach(({ op, id }, i) => {
                    const got = answers[i]!;
                    const want = model.reserve(id, op, now);
                    const what = `reserve ${JSON.stringify(op)} at +${now - T0} ms${step.length > 1 ? ` (call ${i + 1} of ${step.length} in one tick)` : ""}`;
                    expect(got.outcome, what).toBe(want.outcome);
                    expect(got.reason, what).toBe(want.reason);
                    if (want.outcome === "DENIED") expect(got.deniedLimitId, what).toBe(want.limitId);
                    expect(got.shadowReason, what).toBe(want.shadowReason);
                    expect(got.replayed, what).toBe(want.replayOf !== undefined);
                    if (want.replayOf !== undefined) expect(got.reservationId, what).toBe(want.replayOf);
                    else if (model.open.has(id)) {
                      expect(got.reservationId, what).toBe(id);
                      ids.push(id);
                    } else expect(got.reservationId, what).toBeUndefined();
                  });
                } else if (ids.length > 0) {
                  const calls = (step as Array<Extract<Op, { kind: "release" }>>).map((op) => {
                    const id = ids[op.pick % ids.length]!;
                    const actual: Record<string, bigint> = {};
                    const actualN: Record<string, number> = {};
                    for (const [meter, v] of [["units", op.units], ["tokens", op.tokens], ["spend", op.spend]] as const) {
                      if (v === null) continue;
                      actual[meter] = BigInt(v);
                      actualN[meter] = v;
                    }
                    return { op, id, actualN, answer: store.release({ accountId: account, reservationId: id, outcome: op.cancel ? "CANCEL" : "COMMIT", actual }) };
                  });
                  const answers = await Promise.all(calls.map((c) => c.answer));
                  calls.forEach(({ op, id, actualN }, i) => {
                    const got = answers[i]!;
                    const want = model.release(id, op.cancel, actualN, now);
                    const what = `release ${id} ${JSON.stringify(op)} at +${now - T0} ms${step.length > 1 ? ` (call ${i + 1} of ${step.length} in one tick)` : ""}`;
                    expect(got.outcome, what).toBe(want.outcome);
                    expect(got.state, what).toBe(want.state);
                  });
                }
                const peek = await store.reserve({
                  accountId: account,
                  reservationId: "peek",
                  mode: "CHECK_ONLY",
                  ttlMs: TTL_MIN,
                  product: "p",
                  expiryPolicy: "charge",
                  gates: [],
                  limits: [fixed(0n), rolling(0n), budget(0n), { id: SLOT, kind: "CONCURRENCY", meter: "calls", amount: 0n, limit: BigInt(SLOTS) }],
                });
                model.sweep(now);
                for (const [rid, e] of model.slots) if (e <= now) model.slots.delete(rid);
                const w = model.win(now);
                const after = `after ${JSON.stringify(step)} at +${now - T0} ms`;
                expect(peek.states[0]!.used, `fixed quota used ${after}`).toBe(BigInt(model.qUsed("p", now)));
                expect(peek.states[0]!.overage, `fixed quota overage ${after}`).toBe(BigInt(model.qOver[w]!));
                expect(peek.states[1]!.used, `rolling quota used ${after}`).toBe(BigInt(model.rSum(model.rUsed, now)));
                expect(peek.states[1]!.overage, `rolling quota overage ${after}`).toBe(BigInt(model.rSum(model.rOver, now)));
                expect(peek.states[2]!.used, `budget used ${after}`).toBe(BigInt(model.bUsed()));
                expect(peek.states[2]!.overage, `budget overage ${after}`).toBe(BigInt(model.bOver));
                expect(peek.states[3]!.used, `slots in use ${after}`).toBe(BigInt(model.slots.size));
              }
            }),
            { numRuns, seed },
          );
        } finally {
          await cleanup();
        }
      }, 600_000);
    }
  });
}
