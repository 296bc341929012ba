/**
 * Redis faults: unreachable (down or hanging) -> every answer within the deadline, by the plan's failure mode,
 * flagged in the answer and in metrics, recovering by itself; restarted empty -> counters rebuilt from the Postgres
 * usage snapshots on first touch, losing at most the usage of one flush interval.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Decision, DenyReason } from "../../src/gen/quota/v1/types_pb.ts";
import { startTestApp, type TestApp } from "../support/app.ts";
import { clients, type Clients } from "../support/clients.ts";
import { applyPlans, seedAccount } from "../support/fixtures.ts";
import { PrivateRedis } from "../support/redis-server.ts";
import { TcpProxy } from "../support/tcp-proxy.ts";

const PLANS = `
plans:
  - id: closed
    name: fails closed
    failureMode: closed
    limits: [{ name: monthly, kind: quota, limit: 100000, period: monthly }]
  - id: open
    name: fails open
    failureMode: open
    limits: [{ name: monthly, kind: quota, limit: 100000, period: monthly }]
`;
const DEADLINE_MS = 50;
const FLUSH_MS = 300;

async function waitFor(cond: () => Promise<boolean>, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error("condition not reached in time");
}

describe("Redis unreachable", () => {
  let redis: PrivateRedis;
  let proxy: TcpProxy;
  let t: TestApp;
  let c: Clients;
  beforeAll(async () => {
    redis = await PrivateRedis.start();
    proxy = await TcpProxy.start(redis.port);
    t = await startTestApp({ clock: false, env: { REDIS_URL: `redis://127.0.0.1:${proxy.port}`, QUOTA_STORE_DEADLINE_MS: String(DEADLINE_MS) } });
    c = clients("grpc-js", { grpc: t.app.grpcPort, http: t.app.httpPort });
    await applyPlans(c, PLANS);
  });
  afterAll(async () => {
    c?.close();
    await t?.stop();
    await proxy?.close();
    await redis?.stop();
  });

  for (const mode of ["cut", "stall"] as const) {
    it(`answers within the deadline by plan policy while Redis is ${mode === "cut" ? "down" : "hanging"}, then recovers by itself`, async () => {
      const closed = await seedAccount(c, "closed");
      const open = await seedAccount(c, "open");
      const call = (k: string) => c.quota.checkAndReserve({ apiKey: k, product: "api", method: "get" });
      expect((await call(closed.apiKey)).decision).toBe(Decision.ALLOWED);
      expect((await call(open.apiKey)).decision).toBe(Decision.ALLOWED);

      proxy[mode]();
      const timings: number[] = [];
      for (let i = 0; i < 20; i++) {
        const started = performance.now();
        const [a, b] = await Promise.all([call(closed.apiKey), call(open.apiKey)]);
        timings.push(performance.now() - started);
        expect(a).toMatchObject({ decision: Decision.DENIED, reason: DenyReason.UNAVAILABLE, failOpen: false });
        expect(b).toMatchObject({ decision: Decision.ALLOWED, failOpen: true, reservationId: "" });
      }
      // The deadline bounds the store wait; the rest is one loopback gRPC round trip.
      expect(Math.max(...timings)).toBeLessThan(DEADLINE_MS + 250);
      const metrics = await t.app.metrics.metrics();
      expect(metrics).toMatch(/quota_decisions_total\{decision="ALLOWED",reason="",mode="ENFORCE",fail_open="true",limit_kind="",plan="[^"]+"\} [1-9]/);
      expect(metrics).toMatch(/quota_decisions_total\{decision="DENIED",reason="UNAVAILABLE",mode="ENFORCE",fail_open="false",limit_kind="",plan="[^"]+"\} [1-9]/);

      proxy.restore();
      await waitFor(async () => (await call(closed.apiKey)).decision === Decision.ALLOWED, 10_000);
      const after = await call(open.apiKey);
      expect(after).toMatchObject({ decision: Decision.ALLOWED, failOpen: false });
      expect(after.reservationId).not.toBe("");
    });
  }
});

describe("Redis restarted empty during load", () => {
  let redis: PrivateRedis;
  let t: TestApp;
  let c: Clients;
  beforeAll(async () => {
    redis = await PrivateRedis.start();
    t = await startTestApp({ clock: false, env: { REDIS_URL: redis.url, QUOTA_FLUSH_INTERVAL_MS: String(FLUSH_MS), QUOTA_STORE_DEADLINE_MS: "500" } });
    c = clients("grpc-js", { grpc: t.app.grpcPort, http: t.app.httpPort });
    await applyPlans(c, PLANS);
  });
  afterAll(async () => {
    c?.close();
    await t?.stop();
    await redis?.stop();
  });

  it("rebuilds counters from the usage snapshots on first touch; the loss is at most one flush interval of usage", async () => {
    const s = await seedAccount(c, "closed");
    const allowedAt: number[] = [];
    let errors = 0;
    let running = true;
    const load = (async () => {
      const until = Date.now() + 15_000;
      while (running && Date.now() < until) {
        try {
          const a = await c.quota.checkAndReserve({ apiKey: s.apiKey, product: "api", method: "get" });
          if (a.decision === Decision.ALLOWED && !a.failOpen) allowedAt.push(Date.now());
        } catch {
          errors++;
        }
        await new Promise((r) => setTimeout(r, 2));
      }
    })();
    await new Promise((r) => setTimeout(r, 4 * FLUSH_MS));
    const crashAt = Date.now();
    const allowedBeforeCrash = allowedAt.length;
    await redis.restartEmpty();
    await new Promise((r) => setTimeout(r, 1000));
    running = false;
    await load;
    const allowedTotal = allowedAt.length;
    expect(errors).toBe(0); // no error storm: outages are answers (UNAVAILABLE denials), not RPC errors

    const limits = await c.quota.getLimits({ apiKey: s.apiKey });
    const used = limits.subscriptions[0]!.limits.find((l) => l.name === "monthly")!.used;
    const lost = BigInt(allowedTotal) - used;
    // Calls admitted within the last flush interval (plus the flush's own run time) before the crash.
    const window = allowedAt.filter((ts) => ts >= crashAt - FLUSH_MS - 200 && ts <= crashAt + 50).length;
    expect(allowedBeforeCrash).toBeGreaterThan(0);
    expect(used).toBeGreaterThan(BigInt(allowedTotal - allowedBeforeCrash)); // something was restored, not zero
    expect(lost).toBeGreaterThanOrEqual(0n);
    expect(lost).toBeLessThanOrEqual(BigInt(window));
  });
});
