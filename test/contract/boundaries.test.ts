/**
 * The time boundaries of docs/operations.md, checked for both counter stores with the injected clock, just before,
 * at and after each one:
 * - a reservation never released stops holding its concurrency slot at exactly its TTL, and is settled by its
 *   policy by the first call at or after it (charge keeps the amount, refund gives it back);
 * - a settled reservation's result is kept for the retention grace (DEFAULT_RETENTION_GRACE_MS, 5 min) past the later
 *   of its TTL end and its settlement: a second Release replays it until then, and from then on the id is unknown
 *   (NOT_FOUND);
 * - an idempotency id replays its reservation until the grace past the reservation's expiry;
 * - one call settles at most SWEEP_BATCH (16) expired reservations; the rest are settled by the following calls.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_RETENTION_GRACE_MS, SWEEP_BATCH, type CapacityEntry, type CounterLimit, type CounterStore, type ReserveCommand } from "../../src/core/counter-store.ts";
import { InMemoryCounterStore } from "../../src/store/memory/in-memory-counter-store.ts";
import { RedisCounterStore } from "../../src/store/redis/redis-counter-store.ts";
import { ManualClock, T0, uniqueId } from "../support/env.ts";
import { testRedis } from "../support/redis.ts";

const DAY = 86_400_000;
const TTL = 10_000;

const STORES: Array<[string, (clock: () => number) => Promise<{ store: CounterStore; cleanup: () => Promise<void> }>]> = [
  ["InMemoryCounterStore", async (clock) => ({ store: new InMemoryCounterStore({ clock }), cleanup: async () => {} })],
  [
    "RedisCounterStore",
    async (clock) => {
      const { redis, prefix, cleanup } = await testRedis();
      return { store: new RedisCounterStore(redis, { keyPrefix: prefix, clock }), cleanup };
    },
  ],
];

for (const [name, factory] of STORES) {
  describe(`boundaries: ${name}`, () => {
    const clock = new ManualClock();
    let store: CounterStore;
    let cleanup: () => Promise<void>;
    beforeAll(async () => {
      ({ store, cleanup } = await factory(clock.now));
    });
    afterAll(async () => cleanup?.());

    /** A fresh account per test (tests share nothing but the store), clock at T0. */
    const account = async (base = 1000n) => {
      clock.set(T0);
      const id = uniqueId("bnd");
      const cap: CapacityEntry = { limitId: "s:1:q", base, basePriority: 100, grants: [] };
      await store.restore(id, [cap], {});
      return id;
    };
    const quota = (amount: bigint): CounterLimit => ({ id: "s:1:q", kind: "QUOTA", meter: "units", amount, period: { type: "fixed", bounds: [T0 - 2 * DAY, T0 - DAY, T0 + 30 * DAY, T0 + 60 * DAY] } });
    const slot = (amount = 1n): CounterLimit => ({ id: "k:1:slots", kind: "CONCURRENCY", meter: "calls", amount, limit: 1n });
    let seq = 0;
    const cmd = (accountId: string, limits: CounterLimit[], extra: Partial<ReserveCommand> = {}): ReserveCommand => ({
      accountId,
      reservationId: `r_${accountId}_${++seq}`,
      mode: "ENFORCE",
      ttlMs: TTL,
      product: "api",
      expiryPolicy: "charge",
      gates: [],
      limits,
      ...extra,
    });
    const peek = async (accountId: string) => {
      const p = await store.reserve(cmd(accountId, [quota(0n), slot(0n)], { mode: "CHECK_ONLY" }));
      return { used: p.states[0]!.used, slots: p.states[1]!.used };
    };

    for (const policy of ["charge", "refund"] as const) {
      it(`${policy}: holds the slot until TTL - 1 ms, frees it at the TTL and settles by policy on the first call at it`, async () => {
        const a = await account();
        const r = await store.reserve(cmd(a, [quota(7n), slot()], { expiryPolicy: policy }));
        expect(r.outcome).toBe("ALLOWED");
        clock.set(T0 + TTL - 1);
        expect(await peek(a)).toEqual({ used: 7n, slots: 1n });
        expect(await store.reserve(cmd(a, [slot()]))).toMatchObject({ outcome: "DENIED", reason: "CONCURRENCY_LIMITED" });
        clock.set(T0 + TTL);
        // The first call at the TTL sweeps it: slot free, amount kept (charge) or given back (refund).
        expect(await peek(a)).toEqual({ used: policy === "charge" ? 7n : 0n, slots: 0n });
        const late = await store.release({ accountId: a, reservationId: r.reservationId!, outcome: "COMMIT", actual: { units: 1n } });
        expect(late).toMatchObject({ outcome: "REPLAYED", state: policy === "charge" ? "EXPIRED_CHARGED" : "EXPIRED_REFUNDED" });
        expect(await peek(a)).toEqual({ used: policy === "charge" ? 7n : 0n, slots: 0n }); // the late Release changed nothing
      });
    }

    it("settles a Release at TTL - 1 ms normally (COMMITTED with the actual cost)", async () => {
      const a = await account();
      const r = await store.reserve(cmd(a, [quota(7n), slot()], { expiryPolicy: "refund" }));
      clock.set(T0 + TTL - 1);
      const s = await store.release({ accountId: a, reservationId: r.reservationId!, outcome: "COMMIT", actual: { units: 3n } });
      expect(s).toMatchObject({ outcome: "SETTLED", state: "COMMITTED", charged: { units: 3n } });
      clock.set(T0 + TTL);
      expect(await peek(a)).toEqual({ used: 3n, slots: 0n });
    });

    it("replays a settled Release until the grace past the later of its TTL end and its settlement, then forgets it", async () => {
      const a = await account();
      const r = await store.reserve(cmd(a, [quota(5n)]));
      const settledAt = T0 + 1234;
      clock.set(settledAt);
      const first = await store.release({ accountId: a, reservationId: r.reservationId!, outcome: "COMMIT", actual: { units: 2n } });
      expect(first).toMatchObject({ outcome: "SETTLED", state: "COMMITTED", charged: { units: 2n } });
      const keepUntil = Math.max(T0 + TTL, settledAt) + DEFAULT_RETENTION_GRACE_MS;
      clock.set(keepUntil - 1);
      const replay = await store.release({ accountId: a, reservationId: r.reservationId!, outcome: "CANCEL", actual: {} });
      expect(replay).toMatchObject({ outcome: "REPLAYED", state: "COMMITTED", reserved: { units: 5n }, charged: { units: 2n } });
      clock.set(keepUntil);
      const gone = await store.release({ accountId: a, reservationId: r.reservationId!, outcome: "CANCEL", actual: {} });
      expect(gone.outcome).toBe("NOT_FOUND");
      expect((await peek(a)).used).toBe(2n); // neither the replay nor the forgotten id changed the charge
    });

    it("keeps an expired reservation's result for the grace past its expiry", async () => {
      const a = await account();
      const r = await store.reserve(cmd(a, [quota(5n)], { expiryPolicy: "refund" }));
      clock.set(T0 + TTL); // settled (refunded) by this call's sweep
      expect((await peek(a)).used).toBe(0n);
      clock.set(T0 + TTL + DEFAULT_RETENTION_GRACE_MS - 1);
      expect(await store.release({ accountId: a, reservationId: r.reservationId!, outcome: "COMMIT", actual: {} })).toMatchObject({ outcome: "REPLAYED", state: "EXPIRED_REFUNDED" });
      clock.set(T0 + TTL + DEFAULT_RETENTION_GRACE_MS);
      expect((await store.release({ accountId: a, reservationId: r.reservationId!, outcome: "COMMIT", actual: {} })).outcome).toBe("NOT_FOUND");
    });

    it("replays an idempotency id until the grace past its reservation's expiry, then admits it as a new call", async () => {
      const a = await account();
      const first = await store.reserve(cmd(a, [quota(4n)], { idempotencyId: "req-1" }));
      expect(first).toMatchObject({ outcome: "ALLOWED", replayed: false });
      clock.set(T0 + TTL + DEFAULT_RETENTION_GRACE_MS - 1);
      const replay = await store.reserve(cmd(a, [quota(4n)], { idempotencyId: "req-1" }));
      expect(replay).toMatchObject({ outcome: "ALLOWED", replayed: true, reservationId: first.reservationId });
      expect((await peek(a)).used).toBe(4n); // charged once (expired, policy charge)
      clock.set(T0 + TTL + DEFAULT_RETENTION_GRACE_MS);
      const fresh = await store.reserve(cmd(a, [quota(4n)], { idempotencyId: "req-1" }));
      expect(fresh).toMatchObject({ outcome: "ALLOWED", replayed: false });
      expect(fresh.reservationId).not.toBe(first.reservationId);
      expect((await peek(a)).used).toBe(8n);
    });

    it(`settles at most ${SWEEP_BATCH} expired reservations per call; the following calls settle the rest`, async () => {
      const a = await account();
      const n = SWEEP_BATCH + 5;
      for (let i = 0; i < n; i++) expect((await store.reserve(cmd(a, [quota(1n)], { expiryPolicy: "refund" }))).outcome).toBe("ALLOWED");
      clock.set(T0 + TTL - 1);
      expect((await peek(a)).used).toBe(BigInt(n)); // nothing due yet
      clock.set(T0 + TTL);
      expect((await peek(a)).used).toBe(BigInt(n - SWEEP_BATCH)); // this call settled (refunded) exactly 16
      expect((await peek(a)).used).toBe(0n); // the next call settled the other 5
    });
  });
}
