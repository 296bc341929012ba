/**
 * Product 2 — daily limit = plan base (5,000) + a recurring add-on package (+25k/+50k/+75k/+100k per day), bought,
 * changed and removed through the API with immediate effect, each change in the ledger, prorated to the rest of the
 * monthly cycle ($1.50 a month per 1,000 calls/day); only the account owner may buy; a hard 10 requests/second rate limit.
 */
import { status } from "@grpc/grpc-js";
import { durationMs } from "@bufbuild/protobuf/wkt";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { Decision, DenyReason } from "../../src/gen/quota/v1/types_pb.ts";
import { ADMIN, codeOf, messageOf } from "../support/clients.ts";
import { addKey, seedAccount, type Seeded } from "../support/fixtures.ts";
import { applyExample, startScenario, type Scenario } from "../support/scenario.ts";

describe("product 2: daily limit with add-ons", () => {
  let s: Scenario;
  let owner: Seeded;
  let member: { apiKey: string; keyId: string };
  beforeAll(async () => {
    s = await startScenario("2026-03-01T00:00:00Z");
    await applyExample(s.c, "daily-addons.yaml");
  });
  // Every test starts from its own account on Mar 1: tests run alone or in any order.
  beforeEach(async () => {
    s.clock.set(Date.parse("2026-03-01T00:00:00Z"));
    owner = await seedAccount(s.c, "daily-5k", { startsAt: Date.parse("2026-03-01T00:00:00Z"), key: { owner: true } });
    member = await addKey(s.c, owner.accountId, owner.subscriptionId, { owner: false });
  });
  afterAll(async () => s?.stop());

  const daily = async () => (await s.c.quota.getLimits({ apiKey: owner.apiKey })).subscriptions[0]!.limits.find((l) => l.name === "requests-daily")!;
  const addOn = (apiKey: string, key: string, packageId: string) =>
    s.c.quota.topUp({ apiKey, idempotencyKey: key, target: { case: "addOn", value: { packageId } } });
  const ledger = async () => (await s.c.admin.listLedger({ accountId: owner.accountId }, ADMIN)).transactions.filter((t) => t.type === "addon_change");

  it("starts at the plan base of 5,000 a day", async () => {
    expect(await daily()).toMatchObject({ limit: 5000n, remaining: 5000n });
  });

  it("lets only the account owner buy add-ons", async () => {
    const err = await addOn(member.apiKey, "m1", "plus-25k").catch((e) => e);
    expect(codeOf(err)).toBe(status.PERMISSION_DENIED);
    expect(await daily()).toMatchObject({ limit: 5000n });
    expect(await ledger()).toHaveLength(0);
  });

  it("buys +25k with immediate effect, explained in GetLimits and priced in the ledger", async () => {
    const r = await addOn(owner.apiKey, "o1", "plus-25k");
    expect(r.newLimit).toBe(30_000n);
    const check = await s.c.quota.checkAndReserve({ apiKey: member.apiKey, product: "data-api", method: "rows.list" });
    expect(check.limits.find((l) => l.name === "requests-daily")!.limit).toBe(30_000n);
    const q = await daily();
    expect(q.sources.map((x) => [x.kind, x.id, x.amount])).toEqual([
      ["plan", "daily-5k", 5000n],
      ["add_on", "plus-25k", 25_000n],
    ]);
    const [tx] = await ledger();
    expect(tx!.description).toContain("37.50 USD per month");
    expect(tx!.postings.map((p) => [p.ledgerAccount, p.amountMicros])).toEqual([
      [`receivable:${owner.accountId}`, -37_500_000n],
      ["revenue:addons", 37_500_000n],
    ]);
  });

  it("changes to +50k and rejects a package above the largest with a clear error", async () => {
    expect((await addOn(owner.apiKey, "o1", "plus-25k")).newLimit).toBe(30_000n);
    expect((await addOn(owner.apiKey, "o2", "plus-50k")).newLimit).toBe(55_000n);
    expect(await daily()).toMatchObject({ limit: 55_000n });
    const err = await addOn(owner.apiKey, "o3", "plus-150k").catch((e) => e);
    expect(codeOf(err)).toBe(status.INVALID_ARGUMENT);
    expect(messageOf(err)).toMatch(/add_on\.package_id: unknown add-on package "plus-150k".*largest \+100000/);
    const txs = await ledger();
    expect(txs).toHaveLength(2);
    expect(txs[0]!.description).toContain("changed from plus-25k to plus-50k");
    // The cycle's remainder (all of it: the change is made at the cycle start) of the $37.50 difference per month.
    expect(txs[0]!.postings[1]!.amountMicros).toBe(37_500_000n);
  });

  it("removes the add-on (back to 5,000) and operators can set one through the admin API", async () => {
    expect((await addOn(owner.apiKey, "o2", "plus-50k")).newLimit).toBe(55_000n);
    expect((await addOn(owner.apiKey, "o4", "")).newLimit).toBe(5000n);
    expect(await daily()).toMatchObject({ limit: 5000n });
    expect((await ledger())[0]!.description).toContain("removed");
    const admin = await s.c.admin.setAddOn({ subscriptionId: owner.subscriptionId, packageId: "plus-100k" }, ADMIN);
    expect(admin.newLimit).toBe(105_000n);
    expect(await daily()).toMatchObject({ limit: 105_000n });
    expect((await ledger())[0]!.postings[1]!.amountMicros).toBe(150_000_000n);
  });

  it("enforces 10 requests per second with RATE_LIMITED and a retry-after", async () => {
    s.clock.advance(5_000);
    const answers = [];
    for (let i = 0; i < 11; i++) {
      answers.push(await s.c.quota.checkAndReserve({ apiKey: owner.apiKey, product: "data-api", method: "rows.list" }));
      s.clock.advance(10);
    }
    expect(answers.slice(0, 10).every((a) => a.decision === Decision.ALLOWED)).toBe(true);
    const limited = answers[10]!;
    expect(limited).toMatchObject({ decision: Decision.DENIED, reason: DenyReason.RATE_LIMITED, deniedLimit: "rps" });
    const wait = durationMs(limited.retryAfter!);
    expect(wait).toBeGreaterThan(0);
    expect(wait).toBeLessThanOrEqual(1000);
    expect(limited.headers["Retry-After"]).toBe("1");
    s.clock.advance(wait);
    expect((await s.c.quota.checkAndReserve({ apiKey: owner.apiKey, product: "data-api", method: "rows.list" })).decision).toBe(Decision.ALLOWED);
  });

  it("resets the daily count at the next day", async () => {
    for (let i = 0; i < 3; i++) expect((await s.c.quota.checkAndReserve({ apiKey: owner.apiKey, product: "data-api", method: "rows.list" })).decision).toBe(Decision.ALLOWED);
    expect(await daily()).toMatchObject({ used: 3n, limit: 5000n });
    s.clock.set(Date.parse("2026-03-02T00:00:00Z"));
    expect(await daily()).toMatchObject({ used: 0n, limit: 5000n });
  });
});
