/**
 * Redis faults: unreachable (down or hanging) -> answered by the store deadline (not the client's), by the plan's
 * failure mode, flagged in the answer and in metrics, recovering by itself; restarted empty -> counters rebuilt from
 * the Postgres usage snapshot on first touch, losing exactly the usage admitted after the last flush pass (the test
 * drives the flusher and reads the snapshot it wrote), which is at most one flush interval of usage.
 */
import { status } from "@grpc/grpc-js";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { Decision, DenyReason } from "../../src/gen/quota/v1/types_pb.ts";
import { startTestApp, type TestApp } from "../support/app.ts";
import { clients, codeOf, type Clients } from "../support/clients.ts";
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
  // Each test leaves Redis reachable, whatever it asserted: the other one can run before or after it.
  afterEach(() => proxy?.restore());
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
      for (let i = 0; i < 20; i++) {
        // While Redis hangs ("stall") only the store deadline can answer: without it these calls would wait for the
        // client's own 15 s deadline and fail with DEADLINE_EXCEEDED instead of answering. (The latency under a
        // fault is a number for bench/, not an assertion here.)
        const [a, b] = await Promise.all([call(closed.apiKey), call(open.apiKey)]);
        expect(a).toMatchObject({ decision: Decision.DENIED, reason: DenyReason.UNAVAILABLE, failOpen: false });
        expect(b).toMatchObject({ decision: Decision.ALLOWED, failOpen: true, reservationId: "" });
      }
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

describe("Redis restarted empty", () => {
  let redis: PrivateRedis;
  let t: TestApp;
  let c: Clients;
  beforeAll(async () => {
    redis = await PrivateRedis.start();
    // The periodic flusher is off: the test drives every flush itself, so it knows exactly what each snapshot holds.
    t = await startTestApp({ clock: false, env: { REDIS_URL: redis.url, QUOTA_FLUSH_INTERVAL_MS: "600000", QUOTA_STORE_DEADLINE_MS: "2000" } });
    c = clients("grpc-js", { grpc: t.app.grpcPort, http: t.app.httpPort });
    await applyPlans(c, PLANS);
  });
  afterAll(async () => {
    c?.close();
    await t?.stop();
    await redis?.stop();
  });

  /** Units used in the account's usage snapshot in Postgres (base field `b` + every grant field `g:<id>`). */
  const snapshotUsed = async (accountId: string): Promise<bigint> => {
    let used = 0n;
    for (const [id, state] of Object.entries(await t.app.db.loadUsageSnapshot(accountId))) {
      if (!id.endsWith(":monthly")) continue;
      for (const [f, v] of Object.entries(state)) if (f === "b" || f.startsWith("g:")) used += BigInt(v);
    }
    return used;
  };
  const admit = async (apiKey: string, n: number): Promise<number> => {
    let allowed = 0;
    for (let i = 0; i < n; i++) {
      const a = await c.quota.checkAndReserve({ apiKey, product: "api", method: "get" });
      expect(a.failOpen).toBe(false);
      if (a.decision === Decision.ALLOWED) allowed++;
    }
    return allowed;
  };

  it("rebuilds counters from the last usage snapshot on first touch; exactly the usage admitted after that flush is lost", async () => {
    const s = await seedAccount(c, "closed");
    expect(await admit(s.apiKey, 30)).toBe(30);
    await t.app.flusher.flush(); // one flush pass, as the interval timer runs it
    // The snapshot really written to Postgres, read back before the crash.
    const flushed = await snapshotUsed(s.accountId);
    expect(flushed).toBe(30n);
    // Usage admitted after that flush: what the next pass, one interval later, would have written.
    const afterFlush = await admit(s.apiKey, 12);
    expect(afterFlush).toBe(12);

    await redis.restartEmpty();

    // First touch after the loss: restored from the snapshot, never from nothing.
    const first = await firstAnswer(() => c.quota.checkAndReserve({ apiKey: s.apiKey, product: "api", method: "get" }));
    expect(first).toMatchObject({ decision: Decision.ALLOWED, failOpen: false });
    const monthly = (await c.quota.getLimits({ apiKey: s.apiKey })).subscriptions[0]!.limits.find((l) => l.name === "monthly")!;
    // used = snapshot + the call after the restart: lost = exactly the calls admitted since the flush (12 of 43).
    expect(monthly.used).toBe(flushed + 1n);
    const admittedTotal = 30n + BigInt(afterFlush) + 1n;
    expect(admittedTotal - monthly.used).toBe(BigInt(afterFlush));
  });

  it("loses nothing when the crash comes right after a flush pass", async () => {
    const s = await seedAccount(c, "closed");
    expect(await admit(s.apiKey, 20)).toBe(20);
    await t.app.flusher.flush();
    expect(await snapshotUsed(s.accountId)).toBe(20n);
    await redis.restartEmpty();
    await firstAnswer(() => c.quota.getLimits({ apiKey: s.apiKey }));
    const monthly = (await c.quota.getLimits({ apiKey: s.apiKey })).subscriptions[0]!.limits.find((l) => l.name === "monthly")!;
    expect(monthly.used).toBe(20n);
  });
});

/**
 * The first call after Redis came back: while the client reconnects it may get UNAVAILABLE (a fail-closed denial, or
 * the status for GetLimits), which changes nothing — retried on a bounded count, never a sleep standing in for
 * "reconnected".
 */
async function firstAnswer<T extends object>(call: () => Promise<T>): Promise<T> {
  for (let i = 0; ; i++) {
    try {
      const a = await call();
      const d = a as { decision?: number; reason?: number };
      if (d.decision === undefined || d.decision === Decision.ALLOWED || d.reason !== DenyReason.UNAVAILABLE || i >= 200) return a;
    } catch (e) {
      if (codeOf(e) !== status.UNAVAILABLE || i >= 200) throw e;
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}
