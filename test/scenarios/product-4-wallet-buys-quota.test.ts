/**
 * Product 4 — a prepaid USD wallet buys request quota at 100 requests per $1: wallet debit + quota grant + ledger
 * row in one transaction; typed INSUFFICIENT_BALANCE; bad amounts rejected by field; a token meter that refills to
 * 200,000 at each subscription anniversary.
 */
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { Outcome } from "../../src/gen/quota/v1/quota_pb.ts";
import { Decision, DenyReason } from "../../src/gen/quota/v1/types_pb.ts";
import { ADMIN, codeOf, messageOf } from "../support/clients.ts";
import { deposit, seedAccount, type Seeded } from "../support/fixtures.ts";
import { applyExample, startScenario, type Scenario } from "../support/scenario.ts";

describe("product 4: the wallet buys quota; a token meter refills monthly", () => {
  let s: Scenario;
  let a: Seeded;
  beforeAll(async () => {
    s = await startScenario("2026-01-31T00:00:00Z");
    await applyExample(s.c, "wallet-buys-quota.yaml");
  });
  // Every test starts from its own account with $15 on Jan 31: tests run alone or in any order.
  beforeEach(async () => {
    s.clock.set(Date.parse("2026-01-31T00:00:00Z"));
    a = await seedAccount(s.c, "wallet-requests", { startsAt: Date.parse("2026-01-31T00:00:00Z") });
    await deposit(s.c, a.accountId, "prepaid", 15n);
  });
  afterAll(async () => s?.stop());

  const buy = (key: string, units: bigint, nanos = 0) =>
    s.c.quota.topUp({ apiKey: a.apiKey, idempotencyKey: key, target: { case: "quota", value: { lines: [{ amount: { currencyCode: "USD", units, nanos } }] } }, funding: { case: "fromWallet", value: {} } });
  const state = async () => {
    const v = await s.c.quota.getLimits({ apiKey: a.apiKey });
    return {
      balance: v.wallets.find((w) => w.kind === "prepaid")!.balance!,
      requests: v.subscriptions[0]!.limits.find((l) => l.name === "requests-monthly")!,
      tokens: v.subscriptions[0]!.limits.find((l) => l.name === "tokens-monthly")!,
      purchases: (await s.c.admin.listLedger({ accountId: a.accountId }, ADMIN)).transactions.filter((t) => t.type === "quota_purchase"),
    };
  };

  it("buys +1,000 requests for $10: the answer carries the new total limit and balance; one ledger transaction", async () => {
    const r = await buy("ten-dollars", 10n);
    expect(r.newLimit).toBe(2000n);
    expect(r.newBalance).toMatchObject({ currencyCode: "USD", units: 5n, nanos: 0 });
    const st = await state();
    expect(st.requests.limit).toBe(2000n);
    expect(st.purchases).toHaveLength(1);
    expect(st.purchases[0]!.postings.map((p) => [p.ledgerAccount, p.amountMicros])).toEqual([
      [`wallet:${a.accountId}:prepaid`, -10_000_000n],
      ["revenue:quota", 10_000_000n],
    ]);
  });

  it("answers INSUFFICIENT_BALANCE when the balance is too low, and changes nothing", async () => {
    expect((await buy("ten-dollars", 10n)).newBalance!.units).toBe(5n);
    const err = await buy("too-much", 10n).catch((e) => e);
    expect(codeOf(err)).toBe(status.FAILED_PRECONDITION);
    expect(messageOf(err)).toMatch(/insufficient wallet balance: 5.00 USD available, 10.00 USD needed/);
    const st = await state();
    expect(st.balance.units).toBe(5n);
    expect(st.requests.limit).toBe(2000n);
    expect(st.purchases).toHaveLength(1);
  });

  it("rejects zero, negative, non-numeric and sub-micro amounts by field name", async () => {
    expect((await buy("ten-dollars", 10n)).newBalance!.units).toBe(5n);
    for (const [units, nanos, msg] of [
      [0n, 0, "quota.lines[0].amount: must be greater than zero"],
      [-1n, 0, "quota.lines[0].amount: must be greater than zero"],
      [1n, 500, "quota.lines[0].amount.nanos: sub-micro amounts are not supported"],
    ] as const) {
      const err = await buy(`bad-${units}-${nanos}`, units, nanos).catch((e) => e);
      expect(codeOf(err)).toBe(status.INVALID_ARGUMENT);
      expect(messageOf(err)).toContain(msg);
    }
    // Non-numeric can only be said in JSON: Connect rejects it while decoding, naming the field.
    const res = await fetch(`http://127.0.0.1:${s.t.app.httpPort}/quota.v1.QuotaService/TopUp`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ apiKey: a.apiKey, idempotencyKey: "nan", quota: { lines: [{ amount: { units: "ten" } }] }, fromWallet: {} }),
    });
    const body = (await res.json()) as { code: string; message: string };
    expect(body.code).toBe("invalid_argument");
    expect(body.message).toMatch(/units/);
    // A missing amount (neither units nor amount) is rejected too.
    const missing = await s.c.quota.topUp({ apiKey: a.apiKey, idempotencyKey: "missing", target: { case: "quota", value: { lines: [{}] } }, funding: { case: "fromWallet", value: {} } }).catch((e) => e);
    expect(codeOf(missing)).toBe(status.INVALID_ARGUMENT);
    expect(messageOf(missing)).toContain("quota.lines[0].units");
    const st = await state();
    expect(st.balance.units).toBe(5n);
    expect(st.purchases).toHaveLength(1);
  });

  it("meters tokens against 200,000 a month and refills at the anniversary (Jan 31 -> Feb 28)", async () => {
    const first = await s.c.quota.checkAndReserve({ apiKey: a.apiKey, product: "llm-api", method: "complete", meters: { tokens: 150_000n } });
    expect(first.decision).toBe(Decision.ALLOWED);
    await s.c.quota.release({ reservationId: first.reservationId, outcome: Outcome.COMMIT, actualMeters: { tokens: 120_000n } });
    expect((await state()).tokens).toMatchObject({ limit: 200_000n, used: 120_000n, remaining: 80_000n });
    const tooMany = await s.c.quota.checkAndReserve({ apiKey: a.apiKey, product: "llm-api", method: "complete", meters: { tokens: 90_000n } });
    expect(tooMany).toMatchObject({ decision: Decision.DENIED, reason: DenyReason.QUOTA_EXHAUSTED, deniedLimit: "tokens-monthly" });
    s.clock.set(Date.parse("2026-02-28T00:00:00Z"));
    expect((await state()).tokens).toMatchObject({ limit: 200_000n, used: 0n, remaining: 200_000n });
    expect((await s.c.quota.checkAndReserve({ apiKey: a.apiKey, product: "llm-api", method: "complete", meters: { tokens: 90_000n } })).decision).toBe(Decision.ALLOWED);
  });
});
