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

  it("admits exactly 60 of 60 parallel calls against a quota of 100 (N <= L), and the counter reads 60", async () => {
    const s = await seedAccount(c, "hundred");
    const answers = await Promise.all(Array.from({ length: 60 }, () => c.quota.checkAndReserve({ apiKey: s.apiKey, product: "api", method: "get" })));
    expect(answers.filter((a) => a.decision === Decision.ALLOWED)).toHaveLength(60);
    const monthly = (await c.quota.getLimits({ apiKey: s.apiKey })).subscriptions[0]!.limits.find((l) => l.name === "monthly")!;
    expect(monthly).toMatchObject({ used: 60n, remaining: 40n });
  });

  const inFlight = async (apiKey: string) => (await c.quota.getLimits({ apiKey })).subscriptions[0]!.limits.find((l) => l.name === "in-flight")!.used;
  const reserveAll = (apiKey: string, n: number) => Promise.all(Array.from({ length: n }, () => c.quota.checkAndReserve({ apiKey, product: "api", method: "get" })));

  it("admits exactly 10 of 200 parallel calls while the 10 are held, every other CONCURRENCY_LIMITED; after their Release exactly 10 again", async () => {
    const s = await seedAccount(c, "ten-in-flight");
    for (let round = 0; round < 2; round++) {
      const answers = await reserveAll(s.apiKey, 200);
      const allowed = answers.filter((a) => a.decision === Decision.ALLOWED);
      expect(allowed, `round ${round}`).toHaveLength(10);
      expect(answers.filter((a) => a.decision === Decision.DENIED).map((a) => a.reason)).toEqual(Array(190).fill(DenyReason.CONCURRENCY_LIMITED));
      expect(await inFlight(s.apiKey)).toBe(10n); // held: the server counts exactly 10 in flight
      const released = await Promise.all(allowed.map((a) => c.quota.release({ reservationId: a.reservationId, outcome: Outcome.COMMIT })));
      expect(released.every((r) => !r.replayed)).toBe(true);
      expect(await inFlight(s.apiKey)).toBe(0n);
    }
  });

  it("admits all of 7 parallel calls against 10 in flight (N <= L)", async () => {
    const s = await seedAccount(c, "ten-in-flight");
    const answers = await reserveAll(s.apiKey, 7);
    expect(answers.map((a) => a.decision)).toEqual(Array(7).fill(Decision.ALLOWED));
    expect(await inFlight(s.apiKey)).toBe(7n);
  });

  it("never counts more than 10 in flight at the server while 100 callers reserve and release", async () => {
    const s = await seedAccount(c, "ten-in-flight");
    let completed = 0;
    let denied = 0;
    const seen: bigint[] = [];
    const worker = async () => {
      for (let attempt = 0; attempt < 500; attempt++) {
        const a = await c.quota.checkAndReserve({ apiKey: s.apiKey, product: "api", method: "get" });
        // The server's own count right after this call: slots held, this one included.
        seen.push(a.limits.find((l) => l.name === "in-flight")!.used);
        if (a.decision === Decision.ALLOWED) {
          await new Promise((r) => setTimeout(r, 2));
          await c.quota.release({ reservationId: a.reservationId, outcome: Outcome.COMMIT });
          completed++;
          return;
        }
        expect(a.reason).toBe(DenyReason.CONCURRENCY_LIMITED);
        denied++;
        await new Promise((r) => setTimeout(r, 1 + Math.random() * 5));
      }
    };
    await Promise.all(Array.from({ length: 100 }, worker));
    expect(completed).toBe(100);
    expect(denied).toBeGreaterThan(0); // callers really contended
    expect(seen.filter((u) => u > 10n)).toEqual([]);
    expect(await inFlight(s.apiKey)).toBe(0n);
  });
});
