/**
 * Add-on billing (issue 7, item 18): each monthly cycle is booked once, in full, at renewal; a change within a cycle
 * books the prorated difference; replicas racing the renewal pass book a cycle once.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AddOnRenewals } from "../../src/core/add-on-billing.ts";
import { ADMIN } from "../support/clients.ts";
import { seedAccount, type Seeded } from "../support/fixtures.ts";
import { applyExample, startScenario, type Scenario } from "../support/scenario.ts";

const MAY = Date.parse("2026-05-01T00:00:00Z");
const JUNE = Date.parse("2026-06-01T00:00:00Z");
const DAY = 86_400_000;

describe("add-on billing", () => {
  let s: Scenario;
  beforeAll(async () => {
    s = await startScenario("2026-05-01T00:00:00Z");
    await applyExample(s.c, "daily-addons.yaml"); // $1.50 a month per 1,000/day: +25k = $37.50, +50k = $75.00
  });
  afterAll(async () => s?.stop());

  // Each test has its own subscription and sets the clock it needs: any test runs alone or in any order.
  const addOn = (k: Seeded, key: string, packageId: string) => s.c.quota.topUp({ apiKey: k.apiKey, idempotencyKey: key, target: { case: "addOn", value: { packageId } } });
  /** What the account owes for add-ons: minus the receivable's ledger balance. */
  const owed = async (k: Seeded) => -((await s.t.app.db.postingTotals()).find((t) => t.ledgerAccount === `receivable:${k.accountId}`)?.total ?? 0n);
  const charges = async (k: Seeded) =>
    (await s.t.app.db.listTransactions({ accountId: k.accountId, limit: 100 }))
      .filter((t) => t.type === "addon_change")
      .map((t) => t.postings.find((p) => p.ledgerAccount === "revenue:addons")?.amount ?? 0n)
      .reverse();

  it("prorates a purchase and a change within a cycle, then books each renewal once in full", async () => {
    s.clock.set(MAY);
    const k = await seedAccount(s.c, "daily-5k", { startsAt: MAY });
    // Bought on May 16 at 00:00: 16 of May's 31 days are left.
    s.clock.set(MAY + 15 * DAY);
    await addOn(k, "a1", "plus-25k");
    expect(await owed(k)).toBe((37_500_000n * 16n) / 31n);
    // Upgraded on May 21: the difference ($37.50 a month) for the 11 days left.
    s.clock.set(MAY + 20 * DAY);
    await addOn(k, "a2", "plus-50k");
    expect(await charges(k)).toEqual([(37_500_000n * 16n) / 31n, (37_500_000n * 11n) / 31n]);
    // Nothing more is due in May, however often the renewal pass runs.
    const renewals = new AddOnRenewals({ db: s.t.app.db, clock: s.clock });
    expect(await renewals.run()).toMatchObject({ failed: 0 });
    expect(await charges(k)).toHaveLength(2);
    // June 1: the renewal books June in full at the active package, once — even with two replicas racing.
    s.clock.set(JUNE + 60_000);
    const other = new AddOnRenewals({ db: s.t.app.db, clock: s.clock });
    await Promise.all([renewals.run(), other.run()]);
    await renewals.run();
    expect(await charges(k)).toEqual([(37_500_000n * 16n) / 31n, (37_500_000n * 11n) / 31n, 75_000_000n]);
    expect(await owed(k)).toBe((37_500_000n * 16n) / 31n + (37_500_000n * 11n) / 31n + 75_000_000n);
  });

  it("books the new cycle at the old package before prorating a change made before the renewal pass ran", async () => {
    s.clock.set(MAY);
    const k = await seedAccount(s.c, "daily-5k", { startsAt: MAY });
    await addOn(k, "b1", "plus-50k"); // May 1: the whole of May at $75
    // June 1, 12:00, no renewal pass yet: downgrading to +25k books June at +50k ($75), then credits the $37.50
    // difference for the 29.5 days left of June's 30.
    s.clock.set(JUNE + DAY / 2);
    await addOn(k, "b2", "plus-25k");
    const credit = (-37_500_000n * BigInt(30 * DAY - DAY / 2)) / BigInt(30 * DAY);
    // (Both transactions carry the same time; their order in the listing is not part of the contract.)
    expect((await charges(k)).sort()).toEqual([75_000_000n, 75_000_000n, credit].sort());
    expect(await owed(k)).toBe(75_000_000n + 75_000_000n + credit);
    // A renewal pass now finds June booked: nothing more.
    await new AddOnRenewals({ db: s.t.app.db, clock: s.clock }).run();
    expect(await charges(k)).toHaveLength(3);
  });

  it("a removal credits what is left of the cycle; no renewal is booked after it", async () => {
    s.clock.set(MAY);
    const k = await seedAccount(s.c, "daily-5k", { startsAt: MAY });
    await addOn(k, "c1", "plus-25k"); // May at $37.50
    s.clock.set(MAY + 30 * DAY); // 1 day of May left
    await addOn(k, "c2", "");
    expect((await charges(k)).at(-1)).toBe(-37_500_000n / 31n);
    s.clock.set(JUNE + 1000);
    await new AddOnRenewals({ db: s.t.app.db, clock: s.clock }).run();
    expect(await charges(k)).toHaveLength(2);
    expect(await owed(k)).toBe(37_500_000n - 37_500_000n / 31n);
  });

  it("a subscription created with an add-on is booked for the rest of its first cycle, then renewed", async () => {
    const start = Date.parse("2026-09-10T00:00:00Z");
    s.clock.set(start);
    const sub = await seedAccount(s.c, "daily-5k", { startsAt: start, addOns: { "requests-daily": "plus-25k" } });
    const tx = (await s.c.admin.listLedger({ accountId: sub.accountId }, ADMIN)).transactions.filter((t) => t.type === "addon_change");
    expect(tx.map((t) => t.postings.find((p) => p.ledgerAccount === "revenue:addons")!.amountMicros)).toEqual([37_500_000n]);
    s.clock.set(Date.parse("2026-10-10T00:00:01Z"));
    await new AddOnRenewals({ db: s.t.app.db, clock: s.clock }).run();
    const after = (await s.c.admin.listLedger({ accountId: sub.accountId }, ADMIN)).transactions.filter((t) => t.type === "addon_change");
    expect(after).toHaveLength(2);
    expect(after[0]!.description).toContain("renewal");
  });
});
