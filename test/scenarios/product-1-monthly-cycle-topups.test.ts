/**
 * Product 1 — monthly request quota on the subscription anniversary; top-ups of 100,000 calls for one product,
 * valid for the current cycle only, several lines applied all or nothing; the rate limit never changes.
 */
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { Decision, DenyReason } from "../../src/gen/quota/v1/types_pb.ts";
import { ADMIN, codeOf, messageOf } from "../support/clients.ts";
import { deposit, seedAccount, type Seeded } from "../support/fixtures.ts";
import { applyExample, iso, startScenario, type Scenario } from "../support/scenario.ts";

describe("product 1: monthly cycle with product top-ups", () => {
  let s: Scenario;
  let acct: Seeded;
  beforeAll(async () => {
    s = await startScenario("2026-01-31T10:00:00Z");
    // The example plan, with the monthly base scaled from 3,000,000 down to 3 so the test can spend it.
    await applyExample(s.c, "monthly-cycle-topups.yaml", (doc) => {
      doc.plans[0]!.limits.find((l) => l.name === "requests-monthly")!.limit = 3;
    });
  });
  // Every test starts from its own account at the start of the cycle: tests run alone or in any order.
  beforeEach(async () => {
    s.clock.set(Date.parse("2026-01-31T10:00:00Z"));
    acct = await seedAccount(s.c, "rpc-growth", { startsAt: Date.parse("2026-01-31T10:00:00Z") });
    await deposit(s.c, acct.accountId, "prepaid", 20n);
  });
  afterAll(async () => s?.stop());

  const call = (product = "eth-mainnet", method = "eth_getBalance") => s.c.quota.checkAndReserve({ apiKey: acct.apiKey, product, method });
  const limitsFor = async (product: string) => (await s.c.quota.getLimits({ apiKey: acct.apiKey, product })).subscriptions[0]!;
  const buy = (key: string, lines: Array<{ product: string; units: bigint }>) =>
    s.c.quota.topUp({ apiKey: acct.apiKey, idempotencyKey: key, target: { case: "quota", value: { lines } }, funding: { case: "fromWallet", value: {} } });
  const spendBase = async () => {
    for (let i = 0; i < 3; i++) expect((await call()).decision).toBe(Decision.ALLOWED);
    expect((await call()).reason).toBe(DenyReason.QUOTA_EXHAUSTED);
  };

  it("spends the monthly base and denies past it until the anniversary (Jan 31 -> Feb 28)", async () => {
    for (let i = 0; i < 3; i++) expect((await call()).decision).toBe(Decision.ALLOWED);
    const denied = await call();
    expect(denied).toMatchObject({ decision: Decision.DENIED, reason: DenyReason.QUOTA_EXHAUSTED, deniedLimit: "requests-monthly" });
    const q = denied.limits.find((l) => l.name === "requests-monthly")!;
    expect(iso(q.resetsAt)).toBe("2026-02-28T10:00:00.000Z");
    expect(denied.headers["X-UnitsLimit-Quota-Remaining"]).toBe("0");
    const view = await limitsFor("eth-mainnet");
    expect(iso(view.cycleStart)).toBe("2026-01-31T10:00:00.000Z");
    expect(iso(view.cycleEnd)).toBe("2026-02-28T10:00:00.000Z");
  });

  it("applies a multi-line top-up all or nothing: one bad line changes nothing", async () => {
    const err = await buy("bad-lines", [
      { product: "eth-mainnet", units: 100_000n },
      { product: "polygon-mainnet", units: 50_000n },
    ]).catch((e) => e);
    expect(codeOf(err)).toBe(status.INVALID_ARGUMENT);
    expect(messageOf(err)).toContain("quota.lines[1].units");
    const view = await s.c.quota.getLimits({ apiKey: acct.apiKey });
    expect(view.grants).toHaveLength(0);
    expect(view.wallets.find((w) => w.kind === "prepaid")!.balance!.units).toBe(20n);
  });

  it("tops up 100,000 calls per product from the wallet; a grant serves only its product; the rate limit is unchanged", async () => {
    await spendBase();
    s.clock.advance(2000); // out of the spending calls' rate window
    const rpsBefore = (await limitsFor("eth-mainnet")).limits.find((l) => l.name === "rps")!.limit;
    const r = await buy("lines-1", [
      { product: "eth-mainnet", units: 100_000n },
      { product: "polygon-mainnet", units: 100_000n },
    ]);
    expect(r.newLimit).toBe(100_003n); // eth-mainnet: base 3 + its grant
    expect(r.newBalance!.units).toBe(10n); // 2 x $5 debited
    expect(r.grants.map((g) => [g.product, g.amount, iso(g.validUntil)])).toEqual([
      ["eth-mainnet", 100_000n, "2026-02-28T10:00:00.000Z"],
      ["polygon-mainnet", 100_000n, "2026-02-28T10:00:00.000Z"],
    ]);
    const ledger = await s.c.admin.listLedger({ accountId: acct.accountId }, ADMIN);
    expect(ledger.transactions.filter((x) => x.type === "quota_purchase")).toHaveLength(1);

    expect((await call("eth-mainnet")).decision).toBe(Decision.ALLOWED);
    expect((await call("polygon-mainnet")).decision).toBe(Decision.ALLOWED);
    const arb = await call("arbitrum-mainnet");
    expect(arb).toMatchObject({ decision: Decision.DENIED, reason: DenyReason.QUOTA_EXHAUSTED });

    const rpsAfter = (await limitsFor("eth-mainnet")).limits.find((l) => l.name === "rps")!.limit;
    expect(rpsAfter).toBe(rpsBefore);
    expect(rpsAfter).toBe(25n);
    // 25 calls in one second (the test clock does not move) pass; the 26th is rate limited despite the top-up.
    s.clock.advance(2000);
    for (let i = 0; i < 25; i++) expect((await call()).decision).toBe(Decision.ALLOWED);
    const limited = await call();
    expect(limited).toMatchObject({ decision: Decision.DENIED, reason: DenyReason.RATE_LIMITED });
    expect(limited.retryAfter).toBeDefined();
  });

  it("drops unused top-ups at the next cycle while the plan quota resets", async () => {
    await spendBase();
    await buy("lines-1", [{ product: "eth-mainnet", units: 100_000n }]);
    expect((await s.c.quota.getLimits({ apiKey: acct.apiKey })).grants).toHaveLength(1);
    s.clock.set(Date.parse("2026-02-28T10:00:00Z"));
    const view = await limitsFor("eth-mainnet");
    const q = view.limits.find((l) => l.name === "requests-monthly")!;
    expect(q).toMatchObject({ limit: 3n, used: 0n, remaining: 3n });
    expect(q.sources.map((x) => x.kind)).toEqual(["plan"]);
    expect(iso(view.cycleEnd)).toBe("2026-03-31T10:00:00.000Z"); // back on the 31st
    expect((await s.c.quota.getLimits({ apiKey: acct.apiKey })).grants).toHaveLength(0);
    for (let i = 0; i < 3; i++) expect((await call()).decision).toBe(Decision.ALLOWED);
    expect((await call()).reason).toBe(DenyReason.QUOTA_EXHAUSTED);
  });
});
