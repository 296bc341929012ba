/**
 * Exactness under concurrency through the real gRPC port, with real Postgres and Redis.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Decision, DenyReason } from "../../src/gen/quota/v1/types_pb.ts";
import { Outcome } from "../../src/gen/quota/v1/quota_pb.ts";
import { startTestApp, type TestApp } from "../support/app.ts";
import { clients, type Clients } from "../support/clients.ts";
import { applyPlans, seedAccount } from "../support/fixtures.ts";

const PLANS = `
plans:
  - id: hundred
    name: 100 requests a month
    limits:
      - { name: monthly, kind: quota, limit: 100, period: monthly }
  - id: ten-in-flight
    name: 10 calls in flight
    limits:
      - { name: in-flight, kind: concurrency, scope: subscription, limit: 10 }
`;

describe("concurrency (gRPC, Postgres, Redis)", () => {
  let t: TestApp;
  let c: Clients;
  beforeAll(async () => {
    t = await startTestApp({ clock: false });
    c = clients("grpc-js", { grpc: t.app.grpcPort, http: t.app.httpPort });
    await applyPlans(c, PLANS);
  });
  afterAll(async () => {
    c?.close();
    await t?.stop();
  });

  it("admits exactly 100 of 500 parallel calls against a quota of 100, and the counter reads 100", async () => {
    const s = await seedAccount(c, "hundred");
    const answers = await Promise.all(
      Array.from({ length: 500 }, () => c.quota.checkAndReserve({ apiKey: s.apiKey, product: "api", method: "get" })),
    );
    const allowed = answers.filter((a) => a.decision === Decision.ALLOWED);
    const denied = answers.filter((a) => a.decision === Decision.DENIED);
    expect(allowed).toHaveLength(100);
    expect(denied).toHaveLength(400);
    expect(denied.every((a) => a.reason === DenyReason.QUOTA_EXHAUSTED)).toBe(true);
    expect(new Set(allowed.map((a) => a.reservationId)).size).toBe(100);
    const limits = await c.quota.getLimits({ apiKey: s.apiKey });
    const monthly = limits.subscriptions[0]!.limits.find((l) => l.name === "monthly")!;
    expect(monthly.used).toBe(100n);
    expect(monthly.remaining).toBe(0n);
  });

  it("never has more than 10 calls in flight across 200 parallel callers that release", async () => {
    const s = await seedAccount(c, "ten-in-flight");
    let inFlight = 0;
    let maxInFlight = 0;
    let completed = 0;
    let deniedCount = 0;
    const worker = async () => {
      for (let attempt = 0; attempt < 500; attempt++) {
        const a = await c.quota.checkAndReserve({ apiKey: s.apiKey, product: "api", method: "get" });
        if (a.decision === Decision.ALLOWED) {
          inFlight++;
          maxInFlight = Math.max(maxInFlight, inFlight);
          await new Promise((r) => setTimeout(r, 2));
          inFlight--;
          await c.quota.release({ reservationId: a.reservationId, outcome: Outcome.COMMIT });
          completed++;
          return;
        }
        expect(a.reason).toBe(DenyReason.CONCURRENCY_LIMITED);
        deniedCount++;
        await new Promise((r) => setTimeout(r, 1 + Math.random() * 5));
      }
    };
    await Promise.all(Array.from({ length: 200 }, worker));
    expect(completed).toBe(200);
    expect(maxInFlight).toBeLessThanOrEqual(10);
    expect(maxInFlight).toBeGreaterThan(1);
    expect(deniedCount).toBeGreaterThan(0);
    const limits = await c.quota.getLimits({ apiKey: s.apiKey });
    expect(limits.subscriptions[0]!.limits.find((l) => l.name === "in-flight")!.used).toBe(0n);
  });
});
