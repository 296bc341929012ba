/**
 * The CounterStore contract, run against every implementation (Redis and in-memory) so the embedded default is
 * proven to behave like production.
 */
import { afterAll, beforeEach, describe, expect, it } from "vitest";
import { DEFAULT_RETENTION_GRACE_MS, type CapacityEntry, type CounterLimit, type CounterStore, type ReserveCommand } from "../../src/core/counter-store.ts";
import { ManualClock, T0, uniqueId } from "../support/env.ts";

export interface StoreHarness {
  store: CounterStore;
  /** Simulates losing all hot state (a Redis restart without persistence). */
  wipe(): Promise<void>;
  cleanup(): Promise<void>;
}

export type StoreFactory = (clock: () => number) => Promise<StoreHarness>;

const DAY = 86_400_000;

export function describeCounterStore(name: string, factory: StoreFactory): void {
  describe(`CounterStore contract: ${name}`, () => {
    const clock = new ManualClock();
    let h: StoreHarness;
    let store: CounterStore;
    let account: string;
    let seq = 0;
    const harnesses: StoreHarness[] = [];

    beforeEach(async () => {
      clock.set(T0);
      if (!h) {
        h = await factory(clock.now);
        harnesses.push(h);
        store = h.store;
      }
      account = uniqueId("acct");
    });
    afterAll(async () => {
      for (const x of harnesses) await x.cleanup();
    });

    const rid = () => `r_${account}_${++seq}`;
    const cmd = (limits: CounterLimit[], extra: Partial<ReserveCommand> = {}): ReserveCommand => ({
      accountId: account,
      reservationId: rid(),
      mode: "ENFORCE",
      ttlMs: 30_000,
      product: "api",
      expiryPolicy: "charge",
      gates: [],
      limits,
      ...extra,
    });
    const quota = (id: string, amount: bigint, extra: Partial<CounterLimit> = {}): CounterLimit => ({
      id,
      kind: "QUOTA",
      meter: "units",
      amount,
      period: { type: "fixed", bounds: [T0 - 2 * DAY, T0 - DAY / 2, T0 + DAY / 2, T0 + 2 * DAY] },
      ...extra,
    });
    const cap = (limitId: string, base: bigint, grants: CapacityEntry["grants"] = []): CapacityEntry => ({
      limitId,
      base,
      basePriority: 100,
      grants,
    });

    it("decides calls of one account made together exactly as one after another, each with its own answer", async () => {
      // The Redis store sends calls of one account made in the same tick as one script call (reserve.lua takes
      // several): the answers must be those of the same calls made in order.
      await store.restore(account, [cap("s:1:q", 5n)], {});
      const other = uniqueId("acct");
      await store.restore(other, [cap("s:1:q", 1n)], {});
      const conc = (): CounterLimit => ({ id: "k:1:inflight", kind: "CONCURRENCY", meter: "calls", amount: 1n, limit: 6n });
      const same = Array.from({ length: 8 }, () => cmd([quota("s:1:q", 1n), conc()]));
      const idem = cmd([quota("s:1:q", 1n)], { idempotencyId: "k1:same", requestHash: "h1" });
      const idemAgain = cmd([quota("s:1:q", 1n)], { idempotencyId: "k1:same", requestHash: "h1" });
      const idemOther = cmd([quota("s:1:q", 1n)], { idempotencyId: "k1:same", requestHash: "h2" });
      const elsewhere = cmd([quota("s:1:q", 1n)], { accountId: other });
      const answers = await Promise.all([idem, idemAgain, idemOther, ...same, elsewhere].map((c) => store.reserve(c)));
      // The idempotent call takes 1 unit; its repeat replays it (nothing applied); another hash is a mismatch.
      expect(answers[0]).toMatchObject({ outcome: "ALLOWED", replayed: false, reservationId: idem.reservationId });
      expect(answers[1]).toMatchObject({ outcome: "ALLOWED", replayed: true, reservationId: idem.reservationId });
      expect(answers[2]!.outcome).toBe("IDEMPOTENCY_MISMATCH");
      // 4 units left: the next 4 calls pass in order, the last 4 are QUOTA_EXHAUSTED (none of them took a slot).
      const mine = answers.slice(3, 11);
      expect(mine.map((a) => a.outcome)).toEqual(["ALLOWED", "ALLOWED", "ALLOWED", "ALLOWED", "DENIED", "DENIED", "DENIED", "DENIED"]);
      expect(mine.slice(0, 4).map((a) => a.states[0]!.used)).toEqual([2n, 3n, 4n, 5n]);
      expect(mine.slice(0, 4).map((a) => a.states[1]!.used)).toEqual([1n, 2n, 3n, 4n]);
      expect(mine[4]).toMatchObject({ reason: "QUOTA_EXHAUSTED", deniedLimitId: "s:1:q" });
      expect(mine.slice(0, 4).map((a) => a.reservationId)).toEqual(same.slice(0, 4).map((c) => c.reservationId));
      expect(answers[11]).toMatchObject({ outcome: "ALLOWED" }); // another account: its own quota of 1
      const peek = await store.reserve(cmd([quota("s:1:q", 0n), { ...conc(), amount: 0n }], { mode: "CHECK_ONLY" }));
      expect(peek.states.map((s) => s.used)).toEqual([5n, 4n]);
    });

    it("answers NEED_RESTORE to every call of an absent account made together, and applies none", async () => {
      const calls = Array.from({ length: 3 }, () => cmd([quota("s:1:q", 1n)]));
      const answers = await Promise.all(calls.map((c) => store.reserve(c)));
      expect(answers.map((a) => a.outcome)).toEqual(["NEED_RESTORE", "NEED_RESTORE", "NEED_RESTORE"]);
      await store.restore(account, [cap("s:1:q", 5n)], {});
      const again = await Promise.all(calls.map((c) => store.reserve(c)));
      expect(again.map((a) => a.states[0]!.used)).toEqual([1n, 2n, 3n]);
    });

    it("asks for a restore before the account's state is present, then admits", async () => {
      const first = await store.reserve(cmd([quota("s:1:q", 1n)]));
      expect(first.outcome).toBe("NEED_RESTORE");
      await store.restore(account, [cap("s:1:q", 5n)], {});
      const second = await store.reserve(cmd([quota("s:1:q", 1n)]));
      expect(second.outcome).toBe("ALLOWED");
      expect(second.states[0]).toMatchObject({ limit: 5n, used: 1n, remaining: 4n });
    });

    it("admits exactly the quota and denies past it without counting the denial", async () => {
      await store.restore(account, [cap("s:1:q", 3n)], {});
      const outcomes = [];
      for (let i = 0; i < 5; i++) outcomes.push((await store.reserve(cmd([quota("s:1:q", 1n)]))).outcome);
      expect(outcomes).toEqual(["ALLOWED", "ALLOWED", "ALLOWED", "DENIED", "DENIED"]);
      const denied = await store.reserve(cmd([quota("s:1:q", 1n)]));
      expect(denied).toMatchObject({ outcome: "DENIED", reason: "QUOTA_EXHAUSTED", deniedLimitId: "s:1:q" });
      expect(denied.states[0]).toMatchObject({ limit: 3n, used: 3n, remaining: 0n, exceeded: true });
      expect(denied.reservationId).toBeUndefined();
    });

    it("is all or nothing across limits: a denial by one limit increments no other", async () => {
      await store.restore(account, [cap("s:1:big", 100n), cap("s:1:small", 1n)], {});
      const limits = () => [quota("s:1:big", 1n), quota("s:1:small", 1n)];
      expect((await store.reserve(cmd(limits()))).outcome).toBe("ALLOWED");
      const denied = await store.reserve(cmd(limits()));
      expect(denied.outcome).toBe("DENIED");
      expect(denied.deniedLimitId).toBe("s:1:small");
      expect(denied.states[0]!.used).toBe(1n);
      const peek = await store.reserve(cmd([quota("s:1:big", 0n)], { mode: "CHECK_ONLY" }));
      expect(peek.states[0]!.used).toBe(1n);
    });

    it("enforces a sliding-log rate limit with no double burst at a window edge", async () => {
      await store.restore(account, [], {});
      const rate = (): CounterLimit => ({ id: "k:1:rps", kind: "RATE", meter: "calls", amount: 1n, limit: 3n, windowMs: 1000 });
      for (let i = 0; i < 3; i++) {
        expect((await store.reserve(cmd([rate()]))).outcome).toBe("ALLOWED");
        clock.advance(300); // calls at 0, 300, 600
      }
      // at 900: window (−100, 900] holds 3 calls
      const denied = await store.reserve(cmd([rate()]));
      expect(denied).toMatchObject({ outcome: "DENIED", reason: "RATE_LIMITED", retryAfterMs: 100 });
      clock.advance(100); // at 1000 the call at 0 left the window
      expect((await store.reserve(cmd([rate()]))).outcome).toBe("ALLOWED");
      expect((await store.reserve(cmd([rate()]))).outcome).toBe("DENIED");
    });

    it("holds a concurrency slot until release", async () => {
      await store.restore(account, [], {});
      const conc = (): CounterLimit => ({ id: "k:1:inflight", kind: "CONCURRENCY", meter: "calls", amount: 1n, limit: 2n });
      const a = await store.reserve(cmd([conc()]));
      const b = await store.reserve(cmd([conc()]));
      expect([a.outcome, b.outcome]).toEqual(["ALLOWED", "ALLOWED"]);
      const c = await store.reserve(cmd([conc()]));
      expect(c).toMatchObject({ outcome: "DENIED", reason: "CONCURRENCY_LIMITED" });
      const rel = await store.release({ accountId: account, reservationId: a.reservationId!, outcome: "COMMIT", actual: {} });
      expect(rel).toMatchObject({ outcome: "SETTLED", state: "COMMITTED" });
      expect((await store.reserve(cmd([conc()]))).outcome).toBe("ALLOWED");
    });

    it("settles expired reservations by policy: charge keeps the usage, refund gives it back; both free the slot", async () => {
      await store.restore(account, [cap("s:1:q", 10n)], {});
      const conc = (): CounterLimit => ({ id: "k:1:inflight", kind: "CONCURRENCY", meter: "calls", amount: 1n, limit: 1n });
      const charged = await store.reserve(cmd([quota("s:1:q", 4n), conc()], { ttlMs: 1000, expiryPolicy: "charge" }));
      expect(charged.outcome).toBe("ALLOWED");
      clock.advance(1001);
      expect(await store.sweep(account)).toBe(1);
      const refunded = await store.reserve(cmd([quota("s:1:q", 3n), conc()], { ttlMs: 1000, expiryPolicy: "refund" }));
      expect(refunded.outcome).toBe("ALLOWED"); // the expired slot was freed
      clock.advance(1001);
      // the next call sweeps lazily
      const peek = await store.reserve(cmd([quota("s:1:q", 0n), conc()], { mode: "CHECK_ONLY" }));
      expect(peek.states[0]!.used).toBe(4n);
      expect(peek.states[1]!.used).toBe(0n);
      const late = await store.release({ accountId: account, reservationId: refunded.reservationId!, outcome: "COMMIT", actual: {} });
      expect(late).toMatchObject({ outcome: "REPLAYED", state: "EXPIRED_REFUNDED" });
      const late2 = await store.release({ accountId: account, reservationId: charged.reservationId!, outcome: "COMMIT", actual: {} });
      expect(late2).toMatchObject({ outcome: "REPLAYED", state: "EXPIRED_CHARGED" });
    });

    it("charges the actual cost on release: lower refunds, higher charges more, cancel refunds all, once", async () => {
      await store.restore(account, [cap("s:1:q", 100n)], {});
      const r1 = await store.reserve(cmd([quota("s:1:q", 10n)]));
      const s1 = await store.release({ accountId: account, reservationId: r1.reservationId!, outcome: "COMMIT", actual: { units: 4n } });
      expect(s1).toMatchObject({ outcome: "SETTLED", state: "COMMITTED", reserved: { units: 10n }, charged: { units: 4n } });
      const r2 = await store.reserve(cmd([quota("s:1:q", 10n)]));
      await store.release({ accountId: account, reservationId: r2.reservationId!, outcome: "COMMIT", actual: { units: 25n } });
      const r3 = await store.reserve(cmd([quota("s:1:q", 10n)]));
      await store.release({ accountId: account, reservationId: r3.reservationId!, outcome: "CANCEL", actual: {} });
      const again = await store.release({ accountId: account, reservationId: r3.reservationId!, outcome: "COMMIT", actual: { units: 99n } });
      expect(again).toMatchObject({ outcome: "REPLAYED", state: "CANCELLED", charged: { units: 0n } });
      const peek = await store.reserve(cmd([quota("s:1:q", 0n)], { mode: "CHECK_ONLY" }));
      expect(peek.states[0]!.used).toBe(29n);
      const unknown = await store.release({ accountId: account, reservationId: "r_nope", outcome: "COMMIT", actual: {} });
      expect(unknown.outcome).toBe("NOT_FOUND");
    });

    it("returns the same reservation for a repeated idempotency id and charges once", async () => {
      await store.restore(account, [cap("s:1:q", 100n)], {});
      const first = await store.reserve(cmd([quota("s:1:q", 7n)], { idempotencyId: "req-1" }));
      const second = await store.reserve(cmd([quota("s:1:q", 7n)], { idempotencyId: "req-1" }));
      expect(second).toMatchObject({ outcome: "ALLOWED", replayed: true, reservationId: first.reservationId });
      expect(second.states[0]!.used).toBe(7n);
    });

    it("resets a fixed period when its window ends", async () => {
      await store.restore(account, [cap("s:1:q", 2n)], {});
      const bounds = [T0 - DAY, T0, T0 + DAY, T0 + 2 * DAY] as const;
      const q = () => quota("s:1:q", 1n, { period: { type: "fixed", bounds } });
      clock.set(T0 + 1000);
      await store.reserve(cmd([q()]));
      await store.reserve(cmd([q()]));
      const denied = await store.reserve(cmd([q()]));
      expect(denied).toMatchObject({ outcome: "DENIED", retryAfterMs: DAY - 1000 });
      expect(denied.states[0]!.resetAt).toBe(T0 + DAY);
      clock.set(T0 + DAY);
      const next = await store.reserve(cmd([q()]));
      expect(next.outcome).toBe("ALLOWED");
      expect(next.states[0]).toMatchObject({ used: 1n, resetAt: T0 + 2 * DAY });
    });

    it("burns grants by priority, then earliest expiry, then oldest; restricted grants only for their product", async () => {
      await store.restore(account, [
        cap("s:1:q", 10n, [
          { id: "late", amount: 5n, priority: 0, validFrom: T0 - 1, validUntil: T0 + 2 * DAY, seq: 1, product: "" },
          { id: "early", amount: 5n, priority: 0, validFrom: T0 - 1, validUntil: T0 + DAY, seq: 2, product: "" },
          { id: "old-forever", amount: 5n, priority: 0, validFrom: T0 - 1, seq: 3, product: "" },
          { id: "young-forever", amount: 5n, priority: 0, validFrom: T0 - 1, seq: 4, product: "" },
          { id: "other-product", amount: 50n, priority: 500, validFrom: T0 - 1, seq: 5, product: "other" },
          { id: "future", amount: 50n, priority: 0, validFrom: T0 + 10, seq: 6, product: "" },
        ]),
      ], {});
      const r = await store.reserve(cmd([quota("s:1:q", 22n)]));
      expect(r.outcome).toBe("ALLOWED");
      const used = Object.fromEntries(r.states[0]!.sources!.map((s) => [s.id, s.used]));
      // base (priority 100) first, then by expiry: early, late, then oldest of the never-expiring
      expect(r.states[0]!.sources!.map((s) => s.id)).toEqual(["base", "early", "late", "old-forever", "young-forever"]);
      expect(used).toEqual({ base: 10n, early: 5n, late: 5n, "old-forever": 2n, "young-forever": 0n });
      expect(r.states[0]).toMatchObject({ limit: 30n, used: 22n, remaining: 8n });
      // after "early" expires, its consumed units leave with it
      clock.set(T0 + DAY);
      const later = await store.reserve(cmd([quota("s:1:q", 0n)], { mode: "CHECK_ONLY" }));
      expect(later.states[0]!.sources!.map((s) => s.id)).toEqual(["base", "late", "old-forever", "young-forever", "future"]);
      const other = await store.reserve(cmd([quota("s:1:q", 0n)], { mode: "CHECK_ONLY", product: "other" }));
      expect(other.states[0]!.sources!.map((s) => s.id)).toContain("other-product");
    });

    it("lets an overage key go past quota, flagged and recorded; a key without overage is denied", async () => {
      await store.restore(account, [cap("s:1:q", 5n)], {});
      const over = await store.reserve(cmd([quota("s:1:q", 8n, { overage: true })]));
      expect(over).toMatchObject({ outcome: "ALLOWED", overage: true });
      expect(over.states[0]).toMatchObject({ used: 5n, remaining: 0n, overage: 3n });
      const strict = await store.reserve(cmd([quota("s:1:q", 1n)]));
      expect(strict).toMatchObject({ outcome: "DENIED", reason: "QUOTA_EXHAUSTED" });
      const settled = await store.release({ accountId: account, reservationId: over.reservationId!, outcome: "COMMIT", actual: { units: 6n } });
      expect(settled.overage).toBe(1n);
      const after = await store.reserve(cmd([quota("s:1:q", 0n)], { mode: "CHECK_ONLY" }));
      expect(after.states[0]).toMatchObject({ overage: 1n, overageTotal: 1n });
      // the billing total survives the window: a new period resets `overage`, not `overageTotal`
      clock.advance(DAY);
      const nextWindow = await store.reserve(cmd([quota("s:1:q", 0n)], { mode: "CHECK_ONLY" }));
      expect(nextWindow.states[0]).toMatchObject({ used: 0n, overage: 0n, overageTotal: 1n });
    });

    it("counts a rolling window in buckets and forgets usage once its bucket leaves the window", async () => {
      await store.restore(account, [cap("s:1:day", 10n)], {});
      const q = (amount: bigint) => quota("s:1:day", amount, { period: { type: "rolling", windowMs: DAY, bucketMs: 3_600_000 } });
      expect((await store.reserve(cmd([q(6n)]))).outcome).toBe("ALLOWED");
      clock.advance(12 * 3_600_000);
      expect((await store.reserve(cmd([q(4n)]))).outcome).toBe("ALLOWED");
      expect((await store.reserve(cmd([q(1n)]))).outcome).toBe("DENIED");
      clock.advance(13 * 3_600_000); // the first bucket has fully left the 24 h window
      const r = await store.reserve(cmd([q(5n)]));
      expect(r.outcome).toBe("ALLOWED");
      expect(r.states[0]!.used).toBe(9n);
    });

    it("over-counts a rolling window by at most one 15-minute bucket, never under-counts", async () => {
      await store.restore(account, [cap("s:1:day", 10n)], {});
      const q = (amount: bigint) => quota("s:1:day", amount, { period: { type: "rolling", windowMs: DAY, bucketMs: 15 * 60_000 } });
      clock.set(T0 + 5 * 60_000); // 12:05, in the bucket [12:00, 12:15)
      expect((await store.reserve(cmd([q(10n)]))).outcome).toBe("ALLOWED");
      clock.set(T0 + DAY + 6 * 60_000); // 24 h + 1 min later: outside the exact window, still inside its bucket's span
      expect((await store.reserve(cmd([q(0n)], { mode: "CHECK_ONLY" }))).states[0]!.used).toBe(10n);
      clock.set(T0 + DAY + 15 * 60_000 - 1); // the last instant the bucket still counts
      expect((await store.reserve(cmd([q(1n)]))).outcome).toBe("DENIED");
      clock.set(T0 + DAY + 15 * 60_000); // the whole bucket has left the window
      const r = await store.reserve(cmd([q(10n)]));
      expect(r.outcome).toBe("ALLOWED");
      expect(r.states[0]!.used).toBe(10n);
    });

    it("denies a budget when spend would pass it, with no period reset", async () => {
      await store.restore(account, [
        { limitId: "a:credit", base: 0n, basePriority: 0, grants: [{ id: "dep1", amount: 1_000_000n, priority: 0, validFrom: 0, seq: 1, product: "" }] },
      ], {});
      // overage: true is ignored for budgets (only quotas may go past): the budget still denies.
      const b = (amount: bigint): CounterLimit => ({ id: "a:credit", kind: "BUDGET", meter: "spend", amount, period: { type: "none" }, overage: true });
      expect((await store.reserve(cmd([b(600_000n)]))).outcome).toBe("ALLOWED");
      const denied = await store.reserve(cmd([b(500_000n)]));
      expect(denied).toMatchObject({ outcome: "DENIED", reason: "BUDGET_EXHAUSTED" });
      clock.advance(400 * DAY);
      expect((await store.reserve(cmd([b(400_000n)]))).outcome).toBe("ALLOWED");
    });

    it("admits only inside access windows and says when the next one opens", async () => {
      await store.restore(account, [], {});
      const w = (): CounterLimit => ({ id: "s:1:blocks", kind: "WINDOW", meter: "calls", amount: 1n, blocks: [[8 * 3_600_000, 16 * 3_600_000]] });
      const midnight = Date.UTC(2026, 0, 15);
      clock.set(midnight + 7 * 3_600_000);
      const early = await store.reserve(cmd([w()]));
      expect(early).toMatchObject({ outcome: "DENIED", reason: "OUTSIDE_ACCESS_WINDOW", availableAt: midnight + 8 * 3_600_000, retryAfterMs: 3_600_000 });
      clock.set(midnight + 9 * 3_600_000);
      expect((await store.reserve(cmd([w()]))).outcome).toBe("ALLOWED");
      clock.set(midnight + 16 * 3_600_000);
      expect(await store.reserve(cmd([w()]))).toMatchObject({ outcome: "DENIED", availableAt: midnight + DAY + 8 * 3_600_000 });
    });

    it("applies gates: not started, ended", async () => {
      await store.restore(account, [], {});
      const notYet = await store.reserve(cmd([], { gates: [{ reason: "SUBSCRIPTION_NOT_STARTED", from: T0 + 500 }] }));
      expect(notYet).toMatchObject({ outcome: "DENIED", reason: "SUBSCRIPTION_NOT_STARTED", availableAt: T0 + 500 });
      const ended = await store.reserve(cmd([], { gates: [{ reason: "SUBSCRIPTION_ENDED", until: T0 }] }));
      expect(ended).toMatchObject({ outcome: "DENIED", reason: "SUBSCRIPTION_ENDED" });
      expect((await store.reserve(cmd([], { gates: [{ reason: "SUBSCRIPTION_ENDED", until: T0 + 1 }] }))).outcome).toBe("ALLOWED");
    });

    it("CHECK_ONLY changes nothing; SHADOW always allows, flags the would-be denial, and still releases", async () => {
      await store.restore(account, [cap("s:1:q", 1n)], {});
      const dry = await store.reserve(cmd([quota("s:1:q", 1n)], { mode: "CHECK_ONLY" }));
      expect(dry).toMatchObject({ outcome: "ALLOWED" });
      expect(dry.reservationId).toBeUndefined();
      expect((await store.reserve(cmd([quota("s:1:q", 1n)]))).outcome).toBe("ALLOWED");
      const shadow = await store.reserve(cmd([quota("s:1:q", 1n)], { mode: "SHADOW" }));
      expect(shadow).toMatchObject({ outcome: "ALLOWED", shadowReason: "QUOTA_EXHAUSTED" });
      expect(shadow.states[0]!.used).toBe(1n);
      const rel = await store.release({ accountId: account, reservationId: shadow.reservationId!, outcome: "COMMIT", actual: {} });
      expect(rel.outcome).toBe("SETTLED");
    });

    it("ignores a capacity write older than the one stored (racing syncs)", async () => {
      expect(await store.restore(account, [cap("s:1:q", 7n)], {}, 5)).toBe(true);
      expect(await store.setCapacity(account, [cap("s:1:q", 3n)], 4)).toBe("stale");
      const peek = await store.reserve(cmd([quota("s:1:q", 0n)], { mode: "CHECK_ONLY" }));
      expect(peek.states[0]!.limit).toBe(7n);
      expect(await store.setCapacity(account, [cap("s:1:q", 9n)], 5)).toBe("written");
      expect((await store.reserve(cmd([quota("s:1:q", 0n)], { mode: "CHECK_ONLY" }))).states[0]!.limit).toBe(9n);
    });

    it("sweepAndExport settles what is due, then reads the state, in one call: the same as sweep then exportState", async () => {
      await store.restore(account, [cap("s:1:q", 10n)], {});
      const r = await store.reserve(cmd([quota("s:1:q", 4n)], { ttlMs: 1000, expiryPolicy: "refund" }));
      expect(r.outcome).toBe("ALLOWED");
      await store.reserve(cmd([quota("s:1:q", 2n)], { ttlMs: 60_000 }));
      expect((await store.sweepAndExport(account, ["s:1:q"])).settled).toBe(0); // nothing due yet
      clock.advance(1001);
      const both = await store.sweepAndExport(account, ["s:1:q", "s:1:absent"]);
      expect(both.settled).toBe(1); // the refunded 4 are back: the snapshot holds 2
      expect(both.states).toEqual(await store.exportState(account, ["s:1:q", "s:1:absent"]));
      expect(Object.keys(both.states)).toEqual(["s:1:q"]);
      const peek = await store.reserve(cmd([quota("s:1:q", 0n)], { mode: "CHECK_ONLY" }));
      expect(peek.states[0]!.used).toBe(2n);
      expect(await store.sweep(account)).toBe(0); // already settled
      expect(await store.sweepAndExport("absent-account", ["s:1:q"])).toEqual({ settled: 0, states: {} });
    });

    it("never revives a lost account with a capacity sync: usage comes back only through restore", async () => {
      await store.restore(account, [cap("s:1:q", 10n)], {}, 1);
      await store.reserve(cmd([quota("s:1:q", 4n)]));
      const snap = await store.exportState(account, ["s:1:q"]);
      await h.wipe();
      expect(await store.setCapacity(account, [cap("s:1:q", 20n)], 2)).toBe("absent"); // e.g. a top-up committed now
      expect((await store.reserve(cmd([quota("s:1:q", 1n)]))).outcome).toBe("NEED_RESTORE");
      // the restore carries an older capacity version than a sync that raced it: usage is restored regardless
      await store.restore(account, [cap("s:1:q", 20n)], snap, 2);
      expect(await store.restore(account, [cap("s:1:q", 10n)], snap, 1)).toBe(false);
      const after = await store.reserve(cmd([quota("s:1:q", 1n)]));
      expect(after.states[0]).toMatchObject({ limit: 20n, used: 5n });
    });

    it("applies a resent reserve (same reservation id) once and answers it with the stored outcome", async () => {
      await store.restore(account, [cap("s:1:q", 100n)], {});
      const conc = (): CounterLimit => ({ id: "k:1:inflight", kind: "CONCURRENCY", meter: "calls", amount: 1n, limit: 5n });
      const rate = (): CounterLimit => ({ id: "k:1:rps", kind: "RATE", meter: "calls", amount: 1n, limit: 10n, windowMs: 60_000 });
      const sent = cmd([quota("s:1:q", 7n), conc(), rate()]);
      const first = await store.reserve(sent);
      const resent = await store.reserve(sent); // e.g. ioredis resending a command whose reply was lost
      expect(first).toMatchObject({ outcome: "ALLOWED", replayed: false, reservationId: sent.reservationId });
      expect(resent).toMatchObject({ outcome: "ALLOWED", replayed: true, reservationId: sent.reservationId });
      expect(resent.states.map((x) => x.used)).toEqual([7n, 1n, 1n]);
      await store.release({ accountId: account, reservationId: sent.reservationId, outcome: "COMMIT", actual: {} });
      // settled: still the same answer, still nothing applied
      expect(await store.reserve(sent)).toMatchObject({ outcome: "ALLOWED", replayed: true });
      const peek = await store.reserve(cmd([quota("s:1:q", 0n), { ...conc(), amount: 0n }, { ...rate(), amount: 0n }], { mode: "CHECK_ONLY" }));
      expect(peek.states.map((x) => x.used)).toEqual([7n, 0n, 1n]);
    });

    it("makes a reserve that arrives after its CANCEL a no-op (tombstone)", async () => {
      await store.restore(account, [cap("s:1:q", 100n)], {});
      const late = cmd([quota("s:1:q", 9n)]);
      // the caller gave up at its deadline and cancelled; the reserve itself was still queued
      const cancel = await store.release({ accountId: account, reservationId: late.reservationId, outcome: "CANCEL", actual: {} });
      expect(cancel.outcome).toBe("NOT_FOUND");
      const r = await store.reserve(late);
      expect(r).toMatchObject({ outcome: "DENIED", replayed: true });
      expect(r.reservationId).toBeUndefined();
      const peek = await store.reserve(cmd([quota("s:1:q", 0n)], { mode: "CHECK_ONLY" }));
      expect(peek.states[0]!.used).toBe(0n);
      expect((await store.release({ accountId: account, reservationId: late.reservationId, outcome: "COMMIT", actual: {} })).outcome).toBe("NOT_FOUND");
      // the tombstone is short-lived: after the grace the id is unknown again
      clock.advance(DEFAULT_RETENTION_GRACE_MS + 1);
      await store.sweep(account);
      expect((await store.reserve(late)).outcome).toBe("ALLOWED");
    });

    it("keeps a settled result for a bounded grace past the reservation's TTL, then forgets it", async () => {
      await store.restore(account, [cap("s:1:q", 100n)], {});
      const r = await store.reserve(cmd([quota("s:1:q", 2n)], { ttlMs: 30_000, idempotencyId: "req-r" }));
      await store.release({ accountId: account, reservationId: r.reservationId!, outcome: "COMMIT", actual: {} });
      clock.advance(30_000 + DEFAULT_RETENTION_GRACE_MS - 1);
      expect((await store.release({ accountId: account, reservationId: r.reservationId!, outcome: "COMMIT", actual: {} })).outcome).toBe("REPLAYED");
      expect(await store.reserve(cmd([quota("s:1:q", 2n)], { idempotencyId: "req-r" }))).toMatchObject({ replayed: true, reservationId: r.reservationId });
      clock.advance(1);
      expect((await store.release({ accountId: account, reservationId: r.reservationId!, outcome: "COMMIT", actual: {} })).outcome).toBe("NOT_FOUND");
      expect(await store.reserve(cmd([quota("s:1:q", 2n)], { idempotencyId: "req-r" }))).toMatchObject({ outcome: "ALLOWED", replayed: false });
    });

    it("denies every call, a zero-cost one too, once spend has reached the budget", async () => {
      await store.restore(account, [
        { limitId: "a:credit", base: 0n, basePriority: 0, grants: [{ id: "dep1", amount: 1_000n, priority: 0, validFrom: 0, seq: 1, product: "" }] },
      ], {});
      const b = (amount: bigint): CounterLimit => ({ id: "a:credit", kind: "BUDGET", meter: "spend", amount, period: { type: "none" } });
      expect((await store.reserve(cmd([b(0n)]))).outcome).toBe("ALLOWED"); // spend 0 < budget: a free call passes
      expect((await store.reserve(cmd([b(1_000n)]))).outcome).toBe("ALLOWED");
      expect(await store.reserve(cmd([b(0n)]))).toMatchObject({ outcome: "DENIED", reason: "BUDGET_EXHAUSTED", deniedLimitId: "a:credit" });
      expect((await store.reserve(cmd([b(1n)]))).outcome).toBe("DENIED");
    });

    it("never lets a SHADOW decision's idempotency id satisfy an enforcing call", async () => {
      await store.restore(account, [cap("s:1:q", 1n)], {});
      expect((await store.reserve(cmd([quota("s:1:q", 1n)]))).outcome).toBe("ALLOWED"); // quota now exhausted
      const shadow = await store.reserve(cmd([quota("s:1:q", 1n)], { mode: "SHADOW", idempotencyId: "req-s" }));
      expect(shadow).toMatchObject({ outcome: "ALLOWED", shadowReason: "QUOTA_EXHAUSTED" });
      // the same SHADOW call again is a replay of the shadow decision
      expect(await store.reserve(cmd([quota("s:1:q", 1n)], { mode: "SHADOW", idempotencyId: "req-s" }))).toMatchObject({ replayed: true, reservationId: shadow.reservationId });
      const enforced = await store.reserve(cmd([quota("s:1:q", 1n)], { idempotencyId: "req-s" }));
      expect(enforced).toMatchObject({ outcome: "DENIED", reason: "QUOTA_EXHAUSTED", replayed: false });
      expect((await store.reserve(cmd([quota("s:1:q", 1n)], { mode: "CHECK_ONLY", idempotencyId: "req-s" }))).outcome).toBe("DENIED");
      // an enforced decision does satisfy a later SHADOW call with its id
      await store.setCapacity(account, [cap("s:1:q", 5n)]);
      const e = await store.reserve(cmd([quota("s:1:q", 1n)], { idempotencyId: "req-e" }));
      expect(await store.reserve(cmd([quota("s:1:q", 1n)], { mode: "SHADOW", idempotencyId: "req-e" }))).toMatchObject({ replayed: true, reservationId: e.reservationId });
    });

    it("answers IDEMPOTENCY_MISMATCH, applying nothing, when an idempotency id comes back with another request's hash", async () => {
      await store.restore(account, [cap("s:1:q", 10n)], {});
      const first = await store.reserve(cmd([quota("s:1:q", 2n)], { idempotencyId: "req-h", requestHash: "aaaa" }));
      expect(first).toMatchObject({ outcome: "ALLOWED", replayed: false });
      // the same request again: a replay of the first
      expect(await store.reserve(cmd([quota("s:1:q", 2n)], { idempotencyId: "req-h", requestHash: "aaaa" }))).toMatchObject({ outcome: "ALLOWED", replayed: true, reservationId: first.reservationId });
      // another request with the same id: an error, never the first request's answer, and nothing charged
      const other = await store.reserve(cmd([quota("s:1:q", 5n)], { idempotencyId: "req-h", requestHash: "bbbb" }));
      expect(other.outcome).toBe("IDEMPOTENCY_MISMATCH");
      const after = await store.reserve(cmd([quota("s:1:q", 0n)], { mode: "CHECK_ONLY" }));
      expect(after.states[0]).toMatchObject({ used: 2n, remaining: 8n });
      // a record written without a hash (or a call without one) matches as before
      const plain = await store.reserve(cmd([quota("s:1:q", 1n)], { idempotencyId: "req-p" }));
      expect(await store.reserve(cmd([quota("s:1:q", 1n)], { idempotencyId: "req-p", requestHash: "cccc" }))).toMatchObject({ replayed: true, reservationId: plain.reservationId });
    });

    it("reports the capacity version it holds per account (null when absent)", async () => {
      const other = `${account}x`;
      await store.restore(account, [cap("s:1:q", 1n)], {}, 4);
      expect(await store.setCapacity(account, [cap("s:1:q", 2n)], 6)).toBe("written");
      const v = await store.capacityVersions([account, other]);
      expect([v.get(account), v.get(other)]).toEqual([6, null]);
      await h.wipe();
      expect((await store.capacityVersions([account])).get(account)).toBeNull();
    });

    it("round-trips usage through export and restore after losing all hot state", async () => {
      await store.restore(account, [cap("s:1:q", 10n, [{ id: "g1", amount: 10n, priority: 0, validFrom: 0, seq: 1, product: "" }])], {});
      await store.reserve(cmd([quota("s:1:q", 13n)]));
      const snap = await store.exportState(account, ["s:1:q", "s:1:absent"]);
      expect(Object.keys(snap)).toEqual(["s:1:q"]);
      await h.wipe();
      expect((await store.reserve(cmd([quota("s:1:q", 1n)]))).outcome).toBe("NEED_RESTORE");
      await store.restore(account, [cap("s:1:q", 10n, [{ id: "g1", amount: 10n, priority: 0, validFrom: 0, seq: 1, product: "" }])], snap);
      const after = await store.reserve(cmd([quota("s:1:q", 1n)]));
      expect(after.states[0]).toMatchObject({ used: 14n, remaining: 6n });
      // restoring again does not overwrite newer state
      await store.restore(account, [cap("s:1:q", 10n, [{ id: "g1", amount: 10n, priority: 0, validFrom: 0, seq: 1, product: "" }])], snap);
      const again = await store.reserve(cmd([quota("s:1:q", 0n)], { mode: "CHECK_ONLY" }));
      expect(again.states[0]!.used).toBe(14n);
    });
  });
}
