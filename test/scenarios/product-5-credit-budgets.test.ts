/**
 * Product 5 — credit keys: the account's credit is topped up from external payments (minimum $10; a payment
 * reference is credited once); usage is priced in USD per call and per token, reserved as an estimate and settled at
 * the actual; spend reaching the budget fails with BUDGET_EXHAUSTED; 60 requests per minute per key; credits never
 * expire; one balance shared by every key of the account.
 */
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { Outcome } from "../../src/gen/quota/v1/quota_pb.ts";
import { Decision, DenyReason } from "../../src/gen/quota/v1/types_pb.ts";
import { ADMIN, codeOf, messageOf } from "../support/clients.ts";
import { addKey, seedAccount, type Seeded } from "../support/fixtures.ts";
import { assertLedgerBalanced } from "../support/ledger.ts";
import { applyExample, startScenario, type Scenario } from "../support/scenario.ts";

describe("product 5: credit keys with budgets", () => {
  let s: Scenario;
  let k1: Seeded;
  let k2: { apiKey: string; keyId: string };
  beforeAll(async () => {
    s = await startScenario("2026-04-10T00:00:00Z");
    await applyExample(s.c, "credit-budget.yaml");
  });
  // Every test starts from its own account with two credit keys: tests run alone or in any order.
  beforeEach(async () => {
    s.clock.set(Date.parse("2026-04-10T00:00:00Z"));
    k1 = await seedAccount(s.c, "credit");
    k2 = await addKey(s.c, k1.accountId, k1.subscriptionId);
  });
  afterAll(async () => s?.stop());

  const depositCredit = (reference: string, dollars: bigint) =>
    s.c.quota.topUp({
      accountId: k1.accountId,
      idempotencyKey: `dep-${reference}-${dollars}`,
      target: { case: "credit", value: { amount: { units: dollars } } },
      funding: { case: "external", value: { reference, amount: { units: dollars }, provider: "stripe" } },
    });
  /** $10 of credit from a payment reference of this account's own. */
  const funded = async () => expect(micros((await depositCredit(`cs_${k1.accountId}`, 10n)).creditBalance)).toBe(10_000_000n);
  const credit = async () => (await s.c.quota.getLimits({ accountId: k1.accountId })).credit!;
  const micros = (m: { units: bigint; nanos: number } | undefined) => m!.units * 1_000_000n + BigInt(m!.nanos / 1000);

  it("rejects deposits under the $10 minimum and credits a payment reference once only", async () => {
    const small = await depositCredit("cs_small", 5n).catch((e) => e);
    expect(codeOf(small)).toBe(status.INVALID_ARGUMENT);
    expect(messageOf(small)).toContain("credit.amount: must be at least 10.00 USD");
    const first = await depositCredit("cs_live_1", 10n);
    expect(first.replayed).toBe(false);
    expect(micros(first.creditBalance)).toBe(10_000_000n);
    const again = await depositCredit("cs_live_1", 10n);
    expect(again).toMatchObject({ replayed: true, transactionId: first.transactionId });
    const viaAdmin = await s.c.admin.deposit({ accountId: k1.accountId, wallet: "credit", payment: { reference: "cs_live_1", amount: { units: 10n }, provider: "stripe" } }, ADMIN);
    expect(viaAdmin).toMatchObject({ replayed: true, transactionId: first.transactionId });
    expect(await credit()).toMatchObject({ creditKeys: 2 });
    expect(micros((await credit()).totalToppedUp)).toBe(10_000_000n);
  });

  it("reserves the estimated spend and settles the actual, above or below the estimate", async () => {
    await funded();
    const r1 = await s.c.quota.checkAndReserve({ apiKey: k1.apiKey, product: "chat", method: "complete", meters: { tokens: 1000n } });
    expect(r1).toMatchObject({ decision: Decision.ALLOWED, reservedSpendMicros: 2200n }); // $0.0002 + 1,000 x $0.000002
    const s1 = await s.c.quota.release({ reservationId: r1.reservationId, outcome: Outcome.COMMIT, actualMeters: { tokens: 5000n } });
    expect(s1.chargedSpendMicros).toBe(10_200n);
    const r2 = await s.c.quota.checkAndReserve({ apiKey: k2.apiKey, product: "chat", method: "complete", meters: { tokens: 1000n } });
    const s2 = await s.c.quota.release({ reservationId: r2.reservationId, outcome: Outcome.COMMIT, actualMeters: { tokens: 100n } });
    expect(s2.chargedSpendMicros).toBe(400n);
    const c = await credit();
    expect(micros(c.spent)).toBe(10_600n); // one balance for both keys
    expect(micros(c.remaining)).toBe(10_000_000n - 10_600n);
  });

  it("limits each key to 60 requests per minute", async () => {
    await funded();
    s.clock.advance(60_000);
    for (let i = 0; i < 60; i++) {
      const a = await s.c.quota.checkAndReserve({ apiKey: k2.apiKey, product: "chat", method: "ping" });
      expect(a.decision).toBe(Decision.ALLOWED);
      await s.c.quota.release({ reservationId: a.reservationId, outcome: Outcome.COMMIT });
    }
    const limited = await s.c.quota.checkAndReserve({ apiKey: k2.apiKey, product: "chat", method: "ping" });
    expect(limited).toMatchObject({ decision: Decision.DENIED, reason: DenyReason.RATE_LIMITED, deniedLimit: "per-key-rpm" });
    expect((await s.c.quota.checkAndReserve({ apiKey: k1.apiKey, product: "chat", method: "ping" })).decision).toBe(Decision.ALLOWED); // other key
  });

  it("fails with BUDGET_EXHAUSTED when spend would pass the budget; credits never expire", async () => {
    await funded();
    s.clock.advance(60_000);
    const left = micros((await credit()).remaining);
    const all = await s.c.quota.checkAndReserve({ apiKey: k1.apiKey, product: "chat", method: "batch", estimatedSpendMicros: left });
    expect(all.decision).toBe(Decision.ALLOWED);
    const broke = await s.c.quota.checkAndReserve({ apiKey: k2.apiKey, product: "chat", method: "ping" });
    expect(broke).toMatchObject({ decision: Decision.DENIED, reason: DenyReason.BUDGET_EXHAUSTED, deniedLimit: "credit" });
    await s.c.quota.release({ reservationId: all.reservationId, outcome: Outcome.COMMIT, actualSpendMicros: left - 1_000_000n });
    s.clock.advance(400 * 86_400_000); // more than a year later
    expect(micros((await credit()).remaining)).toBe(1_000_000n);
    expect((await s.c.quota.checkAndReserve({ apiKey: k2.apiKey, product: "chat", method: "ping" })).decision).toBe(Decision.ALLOWED);
  });

  it("posts the spend to the ledger: the credit wallet follows it and every transaction balances", async () => {
    await funded();
    // An actual spend above the estimate at the very end of the budget: admitted (the call happened), the excess
    // is owed — posted as a receivable, never a negative wallet.
    const left = micros((await credit()).remaining);
    const last = await s.c.quota.checkAndReserve({ apiKey: k1.apiKey, product: "chat", method: "batch", estimatedSpendMicros: left });
    expect(last.decision).toBe(Decision.ALLOWED);
    await s.c.quota.release({ reservationId: last.reservationId, outcome: Outcome.COMMIT, actualSpendMicros: left + 300_000n });
    expect(micros((await credit()).spent)).toBe(10_300_000n);
    await s.t.app.flusher.flush();
    const c = await credit();
    const view = await s.c.quota.getLimits({ accountId: k1.accountId });
    const wallet = view.wallets.find((w) => w.kind === "credit")!;
    expect(micros(wallet.totalDeposited)).toBe(10_000_000n);
    expect(micros(wallet.balance)).toBe(0n); // spent 10.30 of 10.00
    const receivable = (await s.t.app.db.postingTotals()).find((x) => x.ledgerAccount === `receivable:${k1.accountId}`);
    expect(receivable!.total).toBe(-300_000n);
    expect(micros(c.spent)).toBe(10_300_000n);
    const usage = (await s.c.admin.listLedger({ accountId: k1.accountId }, ADMIN)).transactions.filter((t) => t.type === "usage");
    expect(usage.length).toBeGreaterThan(0);
    await assertLedgerBalanced(s.t.databaseUrl); // per transaction and currency; the wallet equals its postings
    const totals = await s.t.app.db.postingTotals();
    expect(totals.find((x) => x.ledgerAccount === `wallet:${k1.accountId}:credit`)!.total).toBe(micros(wallet.balance));
  });
});
