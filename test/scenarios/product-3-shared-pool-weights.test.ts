/**
 * Product 3 — 1,000 units per rolling 24 hours shared by the keys of a subscription, each key with its own sub-limit
 * (500); method weights (eth_call 20, default 10, heavy 500); 5 calls in flight; overage per key.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { Outcome } from "../../src/gen/quota/v1/quota_pb.ts";
import { Decision, DenyReason, Scope } from "../../src/gen/quota/v1/types_pb.ts";
import { addKey, seedAccount } from "../support/fixtures.ts";
import { applyExample, startScenario, type Scenario } from "../support/scenario.ts";

describe("product 3: shared pool, key sub-limits, weights, concurrency, overage", () => {
  let s: Scenario;
  beforeAll(async () => {
    s = await startScenario("2026-06-01T00:00:00Z");
    await applyExample(s.c, "shared-pool-weights.yaml");
  });
  // Each test seeds its own account; the clock starts over for each (tests run alone or in any order).
  beforeEach(() => s.clock.set(Date.parse("2026-06-01T00:00:00Z")));
  afterAll(async () => s?.stop());

  const call = (apiKey: string, method: string) => s.c.quota.checkAndReserve({ apiKey, product: "eth-mainnet", method });
  const spend = async (apiKey: string, method: string, n: number) => {
    for (let i = 0; i < n; i++) {
      const a = await call(apiKey, method);
      expect(a.decision, `call ${i}`).toBe(Decision.ALLOWED);
      await s.c.quota.release({ reservationId: a.reservationId, outcome: Outcome.COMMIT });
    }
  };

  it("weighs methods, denies a key past its own sub-limit while the other works, and both once the pool is spent", async () => {
    const a = await seedAccount(s.c, "pool-1k-units", { startsAt: Date.parse("2026-06-01T00:00:00Z"), key: { subLimits: { "units-24h": 500n } } });
    const b = await addKey(s.c, a.accountId, a.subscriptionId, { subLimits: { "units-24h": 500n } });
    const c = await addKey(s.c, a.accountId, a.subscriptionId); // no sub-limit of its own

    const weighed = await call(a.apiKey, "eth_call");
    expect(weighed.cost).toBe(20n);
    await s.c.quota.release({ reservationId: weighed.reservationId, outcome: Outcome.COMMIT });
    expect((await call(a.apiKey, "eth_blockNumber")).cost).toBe(10n);
    const heavy = await call(c.apiKey, "trace_block");
    expect(heavy.cost).toBe(500n);
    await s.c.quota.release({ reservationId: heavy.reservationId, outcome: Outcome.CANCEL }); // refunded in full
    const dflt = await s.c.quota.getLimits({ apiKey: a.apiKey });
    expect(dflt.subscriptions[0]!.limits.find((l) => l.name === "units-24h")!.used).toBe(30n);

    await spend(a.apiKey, "eth_call", 23); // A: 30 + 460 = 490
    const overOwn = await call(a.apiKey, "eth_call"); // 510 > 500
    expect(overOwn).toMatchObject({ decision: Decision.DENIED, reason: DenyReason.QUOTA_EXHAUSTED, deniedLimit: "units-24h/key" });
    const own = overOwn.limits.find((l) => l.name === "units-24h/key")!;
    expect(own).toMatchObject({ scope: Scope.KEY, limit: 500n, used: 490n, exceeded: true });
    expect(overOwn.limits.find((l) => l.name === "units-24h")!.exceeded).toBe(false);

    await spend(b.apiKey, "eth_call", 20); // B: 400, pool 890
    await spend(c.apiKey, "eth_getLogs", 11); // C: 110, pool 1000
    const poolA = await call(a.apiKey, "eth_blockNumber");
    const poolB = await call(b.apiKey, "eth_blockNumber"); // B is under its own 500, but the pool is spent
    expect(poolB).toMatchObject({ decision: Decision.DENIED, reason: DenyReason.QUOTA_EXHAUSTED, deniedLimit: "units-24h" });
    expect(poolA).toMatchObject({ decision: Decision.DENIED, reason: DenyReason.QUOTA_EXHAUSTED });
    expect(poolB.headers).toMatchObject({
      "X-UnitsLimit-Quota-Overage": "disabled",
      "X-UnitsLimit-Quota-Allocated": "1000",
      "X-UnitsLimit-Quota-Used": "1000",
      "X-UnitsLimit-Quota-Remaining": "0",
    });
    expect(poolB.headers["RateLimit-Policy"]).toContain('"units-24h";q=1000;w=86400');
    expect(poolB.headers["RateLimit"]).toMatch(/"units-24h";r=0;t=\d+/);

    // Rolling 24 h: once the first 15-minute bucket has fully left the window, its usage is free again.
    s.clock.advance(24 * 3_600_000 + 15 * 60_000);
    expect((await call(b.apiKey, "eth_call")).decision).toBe(Decision.ALLOWED);
  });

  it("holds 5 calls in flight; the sixth is CONCURRENCY_LIMITED until a Release", async () => {
    const k = await seedAccount(s.c, "pool-1k-units");
    const held = [];
    for (let i = 0; i < 5; i++) held.push(await call(k.apiKey, "eth_blockNumber"));
    expect(held.every((h) => h.decision === Decision.ALLOWED)).toBe(true);
    const sixth = await call(k.apiKey, "eth_blockNumber");
    expect(sixth).toMatchObject({ decision: Decision.DENIED, reason: DenyReason.CONCURRENCY_LIMITED, deniedLimit: "in-flight" });
    await s.c.quota.release({ reservationId: held[0]!.reservationId, outcome: Outcome.COMMIT });
    expect((await call(k.apiKey, "eth_blockNumber")).decision).toBe(Decision.ALLOWED);
  });

  it("lets the overage key go past the quota, flagged and recorded; the other key is denied", async () => {
    const over = await seedAccount(s.c, "pool-1k-units", { key: { overageEnabled: true } });
    const strict = await addKey(s.c, over.accountId, over.subscriptionId, { overageEnabled: false });
    for (let i = 0; i < 2; i++) {
      const big = await call(over.apiKey, "trace_block"); // 500 each: the pool of 1,000 is spent
      expect(big.overage).toBe(false);
      await s.c.quota.release({ reservationId: big.reservationId, outcome: Outcome.COMMIT });
    }
    const past = await call(over.apiKey, "eth_call");
    expect(past).toMatchObject({ decision: Decision.ALLOWED, overage: true });
    expect(past.headers["X-UnitsLimit-Quota-Overage"]).toBe("enabled");
    expect(past.headers["X-UnitsLimit-Quota-Used"]).toBe("1020");
    await s.c.quota.release({ reservationId: past.reservationId, outcome: Outcome.COMMIT, actualCost: 30n });
    const denied = await call(strict.apiKey, "eth_call");
    expect(denied).toMatchObject({ decision: Decision.DENIED, reason: DenyReason.QUOTA_EXHAUSTED });
    const pool = (await s.c.quota.getLimits({ apiKey: over.apiKey })).subscriptions[0]!.limits.find((l) => l.name === "units-24h")!;
    expect(pool).toMatchObject({ limit: 1000n, used: 1000n, remaining: 0n, overage: 30n, overageTotal: 30n });
  });
});
