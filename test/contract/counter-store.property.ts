/**
 * Property-based test of the CounterStore contract: random sequences of reserve / release / clock moves, run
 * against a store and against a deliberately simple reference model; after every step the decision and every
 * counter must agree. Run for both stores (redis-counter-store.test.ts, in-memory-counter-store.test.ts).
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { DEFAULT_RETENTION_GRACE_MS, type CounterLimit, type CounterStore } from "../../src/core/counter-store.ts";
import { ManualClock, T0, uniqueId } from "../support/env.ts";

const DAY = 86_400_000;
const QUOTA_CAP = 20n;
const RATE_LIMIT = 4;
const RATE_WINDOW = 1000;
const SLOTS = 3;
const TTL = 5000;

type Op =
  | { kind: "reserve"; amount: number; useQuota: boolean; useRate: boolean; useSlot: boolean; overage: boolean }
  | { kind: "release"; pick: number; cancel: boolean; actual: number | null }
  | { kind: "advance"; ms: number }
  | { kind: "rollover" };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 5, arbitrary: fc.record({ kind: fc.constant("reserve" as const), amount: fc.integer({ min: 1, max: 8 }), useQuota: fc.boolean(), useRate: fc.boolean(), useSlot: fc.boolean(), overage: fc.boolean() }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant("release" as const), pick: fc.nat(), cancel: fc.boolean(), actual: fc.option(fc.integer({ min: 0, max: 12 }), { nil: null }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant("advance" as const), ms: fc.integer({ min: 1, max: 3000 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("rollover" as const) }) },
);

/** The quota's monthly window boundary: a "rollover" op moves the clock just past it (once). */
const ROLL_AT = T0 + 30 * DAY;

/** The reference: plain numbers, no cleverness. */
class Model {
  base = 0; // quota units used from the base, in the current window
  over = 0; // overage units, in the current window
  win = 0; // 0 before ROLL_AT, 1 after
  forgetAt = new Map<string, number>(); // results are kept until the grace past max(TTL end, settlement)
  calls: number[] = []; // rate log (times)
  slots = new Map<string, number>(); // reservation -> expiry
  open = new Map<string, { parts: Array<["b" | "o", number]>; slot: boolean; expires: number; reserved: number; quota: boolean; win: number }>();

  roll(now: number) {
    if (this.win === 0 && now >= ROLL_AT) {
      this.win = 1;
      this.base = 0;
      this.over = 0;
    }
  }

  sweep(now: number) {
    this.roll(now);
    for (const [id, r] of this.open) if (r.expires <= now) this.settle(id, r.reserved, now); // policy "charge", settled when next touched
    for (const [id, e] of this.slots) if (e <= now) this.slots.delete(id);
  }
  reserve(id: string, op: Extract<Op, { kind: "reserve" }>, now: number): boolean {
    this.sweep(now);
    this.calls = this.calls.filter((t) => t > now - RATE_WINDOW);
    const quotaOk = !op.useQuota || this.base + op.amount <= Number(QUOTA_CAP) || op.overage;
    const rateOk = !op.useRate || this.calls.length + 1 <= RATE_LIMIT;
    const slotOk = !op.useSlot || this.slots.size + 1 <= SLOTS;
    if (!(quotaOk && rateOk && slotOk)) return false;
    const parts: Array<["b" | "o", number]> = [];
    if (op.useQuota) this.consume(op.amount, parts);
    if (op.useRate) this.calls.push(now);
    if (op.useSlot) this.slots.set(id, now + TTL);
    this.open.set(id, { parts, slot: op.useSlot, expires: now + TTL, reserved: op.amount, quota: op.useQuota, win: this.win });
    return true;
  }
  consume(amount: number, parts: Array<["b" | "o", number]>) {
    const room = Math.min(Number(QUOTA_CAP) - this.base, amount);
    if (room > 0) {
      this.base += room;
      parts.push(["b", room]);
    }
    if (amount - Math.max(room, 0) > 0) {
      const o = amount - Math.max(room, 0);
      this.over += o;
      parts.push(["o", o]);
    }
  }
  settle(id: string, target: number, at: number) {
    const r = this.open.get(id)!;
    this.open.delete(id);
    this.forgetAt.set(id, Math.max(r.expires, at) + DEFAULT_RETENTION_GRACE_MS);
    this.slots.delete(id);
    if (!r.quota) return;
    const reserved = r.parts.reduce((s, [, a]) => s + a, 0);
    if (target < reserved) {
      let refund = reserved - target;
      for (let i = r.parts.length - 1; i >= 0 && refund > 0; i--) {
        const [f, a] = r.parts[i]!;
        const back = Math.min(a, refund);
        refund -= back;
        if (r.win !== this.win) continue; // charged in a window that has since rolled over: history, not refunded
        if (f === "b") this.base -= back;
        else this.over -= back;
      }
    } else if (target > reserved) {
      this.consume(target - reserved, []);
    }
  }
}

export function describeCounterStoreProperties(name: string, factory: (clock: () => number) => Promise<{ store: CounterStore; cleanup(): Promise<void> }>, numRuns: number): void {
  describe(`CounterStore properties: ${name}`, () => {
    it(`agrees with the reference model on random sequences (${numRuns} runs)`, async () => {
      const clock = new ManualClock();
      const { store, cleanup } = await factory(clock.now);
      try {
        await fc.assert(
          fc.asyncProperty(fc.array(opArb, { minLength: 1, maxLength: 40 }), async (ops) => {
            clock.set(T0);
            const account = uniqueId("prop");
            await store.restore(account, [{ limitId: "s:p:q", base: QUOTA_CAP, basePriority: 100, grants: [] }], {});
            const model = new Model();
            const ids: string[] = [];
            let n = 0;
            const limits = (op: Extract<Op, { kind: "reserve" }>): CounterLimit[] => {
              const out: CounterLimit[] = [];
              if (op.useQuota) out.push({ id: "s:p:q", kind: "QUOTA", meter: "units", amount: BigInt(op.amount), overage: op.overage, period: { type: "fixed", bounds: [T0 - 2 * DAY, T0 - DAY, T0 + 30 * DAY, T0 + 60 * DAY] } });
              if (op.useRate) out.push({ id: "k:p:rate", kind: "RATE", meter: "calls", amount: 1n, limit: BigInt(RATE_LIMIT), windowMs: RATE_WINDOW });
              if (op.useSlot) out.push({ id: "k:p:slots", kind: "CONCURRENCY", meter: "calls", amount: 1n, limit: BigInt(SLOTS) });
              return out;
            };
            for (const op of ops) {
              if (op.kind === "advance") {
                clock.advance(op.ms);
                continue;
              }
              if (op.kind === "rollover") {
                if (clock.now() < ROLL_AT) clock.set(ROLL_AT + 1);
                continue;
              }
              if (op.kind === "reserve") {
                const id = `r${n++}`;
                // "units" is the meter of every limit here, so rate/slot-only reservations also record units.
                const got = await store.reserve({ accountId: account, reservationId: id, mode: "ENFORCE", ttlMs: TTL, product: "p", expiryPolicy: "charge", gates: [], limits: limits(op) });
                const want = model.reserve(id, op, clock.now());
                expect(got.outcome, `reserve ${JSON.stringify(op)}`).toBe(want ? "ALLOWED" : "DENIED");
                if (want) ids.push(id);
              } else if (ids.length > 0) {
                const id = ids[op.pick % ids.length]!;
                const got = await store.release({ accountId: account, reservationId: id, outcome: op.cancel ? "CANCEL" : "COMMIT", actual: op.actual === null ? {} : { units: BigInt(op.actual) } });
                model.sweep(clock.now());
                const r = model.open.get(id);
                if (r) {
                  expect(got.outcome).toBe("SETTLED");
                  model.settle(id, op.cancel ? 0 : (op.actual ?? r.reserved), clock.now());
                } else {
                  // Settled before (by a release or by expiry): its result is kept for the grace, then forgotten.
                  const forgotten = clock.now() >= model.forgetAt.get(id)!;
                  expect(got.outcome).toBe(forgotten ? "NOT_FOUND" : "REPLAYED");
                }
              }
              const peek = await store.reserve({
                accountId: account,
                reservationId: "peek",
                mode: "CHECK_ONLY",
                ttlMs: TTL,
                product: "p",
                expiryPolicy: "charge",
                gates: [],
                limits: [
                  { id: "s:p:q", kind: "QUOTA", meter: "units", amount: 0n, period: { type: "fixed", bounds: [T0 - 2 * DAY, T0 - DAY, T0 + 30 * DAY, T0 + 60 * DAY] } },
                  { id: "k:p:slots", kind: "CONCURRENCY", meter: "calls", amount: 0n, limit: BigInt(SLOTS) },
                ],
              });
              model.sweep(clock.now());
              expect(peek.states[0]!.used, "quota used").toBe(BigInt(model.base));
              expect(peek.states[0]!.overage, "overage").toBe(BigInt(model.over));
              expect(peek.states[1]!.used, "slots in use").toBe(BigInt(model.slots.size));
            }
          }),
          { numRuns, endOnFailure: true },
        );
      } finally {
        await cleanup();
      }
    }, 120_000);
  });
}
