/**
 * Across products: reservations that are never released expire by plan policy (charge or refund) and free their
 * slot; grants burn by priority, then earliest expiry, then oldest, and GetLimits explains every number; the
 * CHECK_ONLY and SHADOW modes.
 */
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { Outcome, ReleaseState } from "../../src/gen/quota/v1/quota_pb.ts";
import { Decision, DenyReason, Mode } from "../../src/gen/quota/v1/types_pb.ts";
import { ADMIN } from "../support/clients.ts";
import { applyPlans, seedAccount } from "../support/fixtures.ts";
import { iso, startScenario, type Scenario } from "../support/scenario.ts";

const PLANS = `
plans:
  - id: expiry-charge
    name: charge on expiry
    reservation: { ttl: 10s, onExpiry: charge }
    limits:
      - { name: monthly, kind: quota, limit: 100, period: monthly }
      - { name: in-flight, kind: concurrency, scope: key, limit: 1 }
  - id: expiry-refund
    name: refund on expiry
    reservation: { ttl: 10s, onExpiry: refund }
    limits:
      - { name: monthly, kind: quota, limit: 100, period: monthly }
      - { name: in-flight, kind: concurrency, scope: key, limit: 1 }
  - id: grants
    name: grants burn order
    limits:
      - { name: monthly, kind: quota, limit: 10, period: monthly }
    topUp: { limit: monthly, increment: 1, price: { units: 1, amount: "0.01" } }
`;

describe("reservations, grants and modes", () => {
  let s: Scenario;
  beforeAll(async () => {
    s = await startScenario("2026-07-01T00:00:00Z");
    await applyPlans(s.c, PLANS);
  });
  // Each test seeds its own account; the clock starts over for each (tests run alone or in any order).
  beforeEach(() => s.clock.set(Date.parse("2026-07-01T00:00:00Z")));
  afterAll(async () => s?.stop());

  const monthly = async (apiKey: string) => (await s.c.quota.getLimits({ apiKey })).subscriptions[0]!.limits.find((l) => l.name === "monthly")!;

  for (const [plan, policy, usedAfter, state] of [
    ["expiry-charge", "charge", 7n, ReleaseState.EXPIRED_CHARGED],
    ["expiry-refund", "refund", 0n, ReleaseState.EXPIRED_REFUNDED],
  ] as const) {
    it(`expires a reservation that is never released: slot freed, reserved amount ${policy === "charge" ? "charged" : "refunded"}`, async () => {
      const k = await seedAccount(s.c, plan);
      const r = await s.c.quota.checkAndReserve({ apiKey: k.apiKey, product: "api", method: "get", cost: 7n });
      expect(r.decision).toBe(Decision.ALLOWED);
      expect((await s.c.quota.checkAndReserve({ apiKey: k.apiKey, product: "api", method: "get" })).reason).toBe(DenyReason.CONCURRENCY_LIMITED);
      s.clock.advance(10_001);
      const next = await s.c.quota.checkAndReserve({ apiKey: k.apiKey, product: "api", method: "get", cost: 1n, mode: Mode.CHECK_ONLY });
      expect(next.decision).toBe(Decision.ALLOWED); // the slot was freed
      expect((await monthly(k.apiKey)).used).toBe(usedAfter);
      const late = await s.c.quota.release({ reservationId: r.reservationId, outcome: Outcome.COMMIT, actualCost: 3n });
      expect(late).toMatchObject({ state, replayed: true });
    });
  }

  it("burns grants by priority, then earliest expiry, then oldest — and GetLimits explains every number", async () => {
    const k = await seedAccount(s.c, "grants", { startsAt: Date.parse("2026-07-01T00:00:00Z") });
    const grant = (id: string, units: bigint, priority: number, until: string) =>
      s.c.admin.adjust(
        { accountId: k.accountId, reason: `grant ${id}`, requestId: id, target: { case: "quota", value: { subscriptionId: k.subscriptionId, limit: "monthly", units, priority, validUntil: timestampFromMs(Date.parse(until)) } } },
        ADMIN,
      );
    const late = await grant("late", 5n, 0, "2026-07-25T00:00:00Z");
    s.clock.advance(1000);
    const early = await grant("early", 5n, 0, "2026-07-20T00:00:00Z");
    s.clock.advance(1000);
    const urgent = await grant("urgent", 5n, 200, "2026-07-30T00:00:00Z");
    s.clock.advance(1000);
    const sameExpiryOld = await grant("old", 5n, 0, "2026-07-31T00:00:00Z");
    s.clock.advance(1000);
    await grant("young", 5n, 0, "2026-07-31T00:00:00Z");

    // 10 (plan, priority 100 after "urgent" at 200) ... spend 27: urgent 5, plan 10, early 5, late 5, old 2.
    const r = await s.c.quota.checkAndReserve({ apiKey: k.apiKey, product: "api", method: "get", cost: 27n });
    expect(r.decision).toBe(Decision.ALLOWED);
    const q = await monthly(k.apiKey);
    expect(q).toMatchObject({ limit: 35n, used: 27n, remaining: 8n });
    expect(q.sources.map((x) => [x.kind, x.amount, x.used, x.priority])).toEqual([
      ["grant", 5n, 5n, 200],
      ["plan", 10n, 10n, 100],
      ["grant", 5n, 5n, 0],
      ["grant", 5n, 5n, 0],
      ["grant", 5n, 2n, 0],
      ["grant", 5n, 0n, 0],
    ]);
    expect(q.sources.map((x) => x.id)).toEqual([urgent.grant!.id, "grants", early.grant!.id, late.grant!.id, sameExpiryOld.grant!.id, expect.any(String)]);
    expect(iso(q.sources[1]!.expiresAt)).toBe("2026-08-01T00:00:00.000Z"); // the plan base lasts the cycle
    expect(iso(q.sources[2]!.expiresAt)).toBe("2026-07-20T00:00:00.000Z");

    // When "early" expires, its consumed units leave with it: 35 - 5 capacity, 27 - 5 used.
    s.clock.set(Date.parse("2026-07-20T00:00:00Z"));
    expect(await monthly(k.apiKey)).toMatchObject({ limit: 30n, used: 22n, remaining: 8n });
  });

  it("CHECK_ONLY answers without reserving; SHADOW always allows, flags the would-be denial, and records it", async () => {
    const k = await seedAccount(s.c, "expiry-charge");
    const dry = await s.c.quota.checkAndReserve({ apiKey: k.apiKey, product: "api", method: "get", cost: 100n, mode: Mode.CHECK_ONLY });
    expect(dry).toMatchObject({ decision: Decision.ALLOWED, reservationId: "" });
    expect((await monthly(k.apiKey)).used).toBe(0n);
    const tooBig = await s.c.quota.checkAndReserve({ apiKey: k.apiKey, product: "api", method: "get", cost: 101n, mode: Mode.CHECK_ONLY });
    expect(tooBig).toMatchObject({ decision: Decision.DENIED, reason: DenyReason.QUOTA_EXHAUSTED });

    const shadow = await s.c.quota.checkAndReserve({ apiKey: k.apiKey, product: "api", method: "get", cost: 101n, mode: Mode.SHADOW });
    expect(shadow).toMatchObject({ decision: Decision.ALLOWED, reason: DenyReason.DENY_REASON_UNSPECIFIED, shadowReason: DenyReason.QUOTA_EXHAUSTED });
    expect(shadow.reservationId).not.toBe("");
    expect((await monthly(k.apiKey)).used).toBe(0n); // a would-be denial reserves nothing
    expect((await s.c.quota.release({ reservationId: shadow.reservationId, outcome: Outcome.COMMIT })).state).toBe(ReleaseState.COMMITTED);
    const shadowOk = await s.c.quota.checkAndReserve({ apiKey: k.apiKey, product: "api", method: "get", cost: 4n, mode: Mode.SHADOW });
    expect(shadowOk).toMatchObject({ decision: Decision.ALLOWED, shadowReason: DenyReason.DENY_REASON_UNSPECIFIED });
    expect((await monthly(k.apiKey)).used).toBe(4n); // an allowed SHADOW call is recorded like ENFORCE
    const metrics = await s.t.app.metrics.metrics();
    expect(metrics).toMatch(/quota_decisions_total\{decision="ALLOWED",reason="QUOTA_EXHAUSTED",mode="SHADOW",fail_open="false",limit_kind="[A-Z_]*",plan="[^"]+"\} 1/);
    const badKey = await s.c.quota.checkAndReserve({ apiKey: "qa_nope", product: "api", method: "get", mode: Mode.SHADOW });
    expect(badKey).toMatchObject({ decision: Decision.ALLOWED, shadowReason: DenyReason.KEY_INVALID });
  });
});
