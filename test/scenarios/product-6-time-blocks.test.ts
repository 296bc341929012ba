/**
 * Product 6 — time-block subscriptions: a pool subscription reserves 1 to 3 daily 8-hour UTC blocks; inside a
 * reserved block its keys have no request quota but 1 concurrent request per key; outside, they are denied with
 * OUTSIDE_ACCESS_WINDOW and the time the next block opens; keys stop when the period ends. A credit key of the same
 * account keeps working outside the blocks.
 */
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { Outcome } from "../../src/gen/quota/v1/quota_pb.ts";
import { Decision, DenyReason } from "../../src/gen/quota/v1/types_pb.ts";
import { ADMIN, codeOf, messageOf } from "../support/clients.ts";
import { addKey, deposit, seedAccount, type Seeded } from "../support/fixtures.ts";
import { applyExample, iso, startScenario, type Scenario } from "../support/scenario.ts";

describe("product 6: time-block subscriptions", () => {
  let s: Scenario;
  let pool: Seeded;
  let second: { apiKey: string };
  let creditKey: string;
  const day = (d: number, hour: number) => Date.parse(`2026-05-${String(d).padStart(2, "0")}T${String(hour).padStart(2, "0")}:00:00Z`);
  beforeAll(async () => {
    s = await startScenario("2026-05-01T00:00:00Z");
    await applyExample(s.c, "time-blocks.yaml");
    await applyExample(s.c, "credit-budget.yaml");
  });
  // Every test starts from its own account on May 1: tests run alone or in any order.
  beforeEach(async () => {
    s.clock.set(day(1, 0));
    pool = await seedAccount(s.c, "time-blocks-30d", { startsAt: day(1, 0), accessBlocks: ["europe"] });
    second = await addKey(s.c, pool.accountId, pool.subscriptionId);
    const credit = await seedAccount(s.c, "credit", { accountId: pool.accountId });
    creditKey = credit.apiKey;
    await deposit(s.c, pool.accountId, "credit", 20n);
  });
  afterAll(async () => s?.stop());

  const call = (apiKey: string) => s.c.quota.checkAndReserve({ apiKey, product: "node-pool", method: "eth_call" });

  it("reserves 1 to 3 known blocks", async () => {
    for (const blocks of [[], ["asia", "europe", "americas", "asia"], ["mars"]]) {
      const err = await s.c.admin.createSubscription({ accountId: pool.accountId, planId: "time-blocks-30d", accessBlocks: blocks }, ADMIN).catch((e) => e);
      expect(codeOf(err)).toBe(status.INVALID_ARGUMENT);
      expect(messageOf(err)).toContain("access_blocks");
    }
  });

  it("denies outside the reserved block with the time the next block opens", async () => {
    s.clock.set(day(2, 7));
    const early = await call(pool.apiKey);
    expect(early).toMatchObject({ decision: Decision.DENIED, reason: DenyReason.OUTSIDE_ACCESS_WINDOW, deniedLimit: "access-window" });
    expect(iso(early.availableAt)).toBe("2026-05-02T08:00:00.000Z");
    expect(early.headers["Retry-After"]).toBe("3600");
    s.clock.set(day(2, 16));
    expect(iso((await call(pool.apiKey)).availableAt)).toBe("2026-05-03T08:00:00.000Z");
  });

  it("inside the block: no request quota, one call in flight per key", async () => {
    s.clock.set(day(3, 9));
    for (let i = 0; i < 200; i++) {
      const a = await call(pool.apiKey);
      expect(a.decision).toBe(Decision.ALLOWED);
      await s.c.quota.release({ reservationId: a.reservationId, outcome: Outcome.COMMIT });
    }
    const held = await call(pool.apiKey);
    expect(held.decision).toBe(Decision.ALLOWED);
    expect(await call(pool.apiKey)).toMatchObject({ decision: Decision.DENIED, reason: DenyReason.CONCURRENCY_LIMITED });
    expect((await call(second.apiKey)).decision).toBe(Decision.ALLOWED); // per key, not per pool
    await s.c.quota.release({ reservationId: held.reservationId, outcome: Outcome.COMMIT });
    expect((await call(pool.apiKey)).decision).toBe(Decision.ALLOWED);
  });

  it("keeps the account's credit key working outside the blocks", async () => {
    s.clock.set(day(3, 20));
    expect((await call(pool.apiKey)).reason).toBe(DenyReason.OUTSIDE_ACCESS_WINDOW);
    expect((await call(creditKey)).decision).toBe(Decision.ALLOWED);
  });

  it("stops the keys when the 30-day period ends", async () => {
    const view = (await s.c.quota.getLimits({ apiKey: pool.apiKey })).subscriptions[0]!;
    expect(iso(view.validUntil)).toBe("2026-05-31T00:00:00.000Z");
    s.clock.set(Date.parse("2026-05-31T09:00:00Z")); // inside the europe block, but the period is over
    expect(await call(pool.apiKey)).toMatchObject({ decision: Decision.DENIED, reason: DenyReason.SUBSCRIPTION_ENDED });
    expect((await call(creditKey)).decision).toBe(Decision.ALLOWED);
  });
});
