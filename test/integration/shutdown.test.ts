/**
 * The shutdown sequence of docs/operations.md, asserted step by step and in order on the service's own stop path
 * (`app.stop()`, what SIGTERM calls: test/e2e/sigterm.test.ts drives the real process under load):
 * 1. health NOT_SERVING for every service ("", quota.v1.QuotaService, quota.v1.QuotaAdminService) and /readyz 503,
 *    at once;
 * 2. still serving for QUOTA_SHUTDOWN_DELAY_MS: a call made after NOT_SERVING was observed is answered, and only
 *    after it are new connections refused;
 * 3. then the drain: an HTTP/1.1 request in flight is answered with `Connection: close`, an HTTP/2 session gets
 *    GOAWAY;
 * 4. when stop() returns: the Redis connections and the Postgres connections of the service are closed (counted at
 *    the Redis proxy and in pg_stat_activity while this process is still alive, so the process exit cannot be what
 *    closed them).
 */
import * as http2 from "node:http2";
import * as net from "node:net";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Decision } from "../../src/gen/quota/v1/types_pb.ts";
import { startTestApp, type TestApp } from "../support/app.ts";
import { clients, type Clients } from "../support/clients.ts";
import { TEST_REDIS_URL } from "../support/env.ts";
import { applyPlans, seedAccount } from "../support/fixtures.ts";
import { healthClient } from "../support/server-process.ts";
import { TcpProxy } from "../support/tcp-proxy.ts";
import { within } from "../support/time.ts";

const PLANS = `
plans:
  - id: shutdown
    name: shutdown
    limits: [{ name: monthly, kind: quota, limit: 100000, period: monthly }]
`;
/** Long enough for a few calls on a loaded machine; the test never waits for it to pass, it observes the order. */
const DELAY_MS = 3000;

const refused = (port: number) =>
  new Promise<boolean>((resolve) => {
    const s = net.connect(port, "127.0.0.1");
    s.once("connect", () => (s.destroy(), resolve(false)));
    s.once("error", () => resolve(true));
  });

describe("shutdown order", () => {
  let proxy: TcpProxy;
  let t: TestApp;
  let c: Clients;
  beforeAll(async () => {
    const redis = new URL(TEST_REDIS_URL);
    proxy = await TcpProxy.start(Number(redis.port || 6379), redis.hostname);
    t = await startTestApp({
      clock: false,
      env: { REDIS_URL: `redis://127.0.0.1:${proxy.port}`, QUOTA_SHUTDOWN_DELAY_MS: String(DELAY_MS), QUOTA_SHUTDOWN_GRACE_MS: "20000" },
    });
    c = clients("grpc-js", { grpc: t.app.grpcPort, http: t.app.httpPort });
    await applyPlans(c, PLANS);
  });
  afterAll(async () => {
    c?.close();
    await t?.stop();
    await proxy?.close();
  });

  it("reports NOT_SERVING, keeps serving for the delay, then refuses, drains with Connection: close and GOAWAY, and closes Redis and Postgres", { timeout: 60_000 }, async () => {
    const s = await seedAccount(c, "shutdown");
    const { grpcPort, httpPort } = t.app;
    const health = healthClient(`127.0.0.1:${grpcPort}`);
    const services = ["", "quota.v1.QuotaService", "quota.v1.QuotaAdminService"];
    for (const name of services) expect(await health.check(name)).toBe("SERVING");
    expect(await c.quota.checkAndReserve({ apiKey: s.apiKey, product: "api", method: "get" })).toMatchObject({ decision: Decision.ALLOWED });
    expect(proxy.connections).toBeGreaterThan(0);

    // An HTTP/2 session (h2c) and an HTTP/1.1 request whose body is not sent yet: both open at the drain.
    const h2 = http2.connect(`http://127.0.0.1:${httpPort}`);
    await new Promise<void>((resolve, reject) => h2.once("connect", () => resolve()).once("error", reject));
    const goaway = new Promise<void>((resolve) => h2.once("goaway", () => resolve()));
    h2.on("error", () => {});
    const body = JSON.stringify({ apiKey: s.apiKey, product: "api", method: "get" });
    const slow = net.connect(httpPort, "127.0.0.1");
    await new Promise<void>((resolve) => slow.once("connect", () => resolve()));
    let response = "";
    slow.on("data", (d) => (response += d.toString("latin1")));
    const answered = new Promise<void>((resolve) => slow.on("close", () => resolve()).on("end", () => resolve()));
    slow.write(`POST /quota.v1.QuotaService/CheckAndReserve HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n`);

    const events: string[] = [];
    const stopped = t.app.stop().then(() => events.push("stopped"));

    // 1. NOT_SERVING for every service and /readyz 503, right away.
    for (const name of services) expect(await health.check(name), `health of "${name}" after stop()`).toBe("NOT_SERVING");
    const ready = await fetch(`http://127.0.0.1:${httpPort}/readyz`, { headers: { connection: "close" } });
    await ready.text();
    expect(ready.status).toBe(503);
    events.push("not serving");

    // 2. Still serving: a call after NOT_SERVING is answered, before any refusal.
    expect(await refused(httpPort)).toBe(false);
    expect(await c.quota.checkAndReserve({ apiKey: s.apiKey, product: "api", method: "get" })).toMatchObject({ decision: Decision.ALLOWED });
    events.push("served");

    // 3. The delay ends: new connections are refused (observed, bounded: never a sleep standing in for the delay).
    for (let i = 0; i < 1000 && !(await refused(httpPort)); i++) await new Promise((r) => setTimeout(r, 10));
    expect(await refused(httpPort)).toBe(true);
    events.push("refusing");
    slow.write(body); // the in-flight HTTP/1.1 request completes during the drain
    await within(answered, 15_000, "the in-flight HTTP/1.1 request");
    const [head] = response.split("\r\n\r\n");
    expect(head, response).toMatch(/^HTTP\/1\.1 200/);
    expect(head!.toLowerCase(), response).toMatch(/\r\nconnection: close/);
    expect(response).toMatch(/"decision":"ALLOWED"/);
    await within(goaway, 15_000, "GOAWAY on the open HTTP/2 session");
    events.push("drained");

    await within(stopped, 25_000, "app.stop()");
    expect(events).toEqual(["not serving", "served", "refusing", "drained", "stopped"]);
    health.close();
    h2.destroy();

    // 4. Redis and Postgres closed by the service itself (this process is alive: nothing else closed them).
    for (let i = 0; i < 50 && proxy.connections > 0; i++) await new Promise((r) => setTimeout(r, 20));
    expect(proxy.connections, "Redis connections of the stopped service").toBe(0);
    const db = new pg.Client({ connectionString: t.databaseUrl });
    await db.connect();
    try {
      const n = (await db.query<{ n: string }>(`select count(*) as n from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()`)).rows[0]!.n;
      expect(Number(n), "Postgres connections of the stopped service").toBe(0);
    } finally {
      await db.end();
    }
  });
});
