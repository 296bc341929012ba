/**
 * Start-up and readiness (issue 7, items 20 and 21): ready means "can answer by policy" — NOT_SERVING (gRPC health,
 * /readyz 503) until the counter store has been reached, while liveness (/healthz) depends on nothing; a Redis that
 * may evict keys (maxmemory-policy other than noeviction) stops the start, unless explicitly allowed (then a warning
 * and a metric).
 */
import { afterAll, describe, expect, it, vi } from "vitest";
import { Redis } from "ioredis";
import pg from "pg";
import pino from "pino";
import { loadConfig } from "../../src/config/config.ts";
import { startApp } from "../../src/main.ts";
import { createTestDatabase, deleteRedisPrefix, startTestApp, type TestApp } from "../support/app.ts";
import { ADMIN, clients, codeOf, messageOf } from "../support/clients.ts";
import { TEST_REDIS_URL, uniqueId } from "../support/env.ts";
import { freePort } from "../support/server-process.ts";
import { PrivateRedis } from "../support/redis-server.ts";
import { healthCheck } from "../support/server-process.ts";
import { TcpProxy } from "../support/tcp-proxy.ts";

const get = async (port: number, path: string) => (await fetch(`http://127.0.0.1:${port}${path}`, { headers: { connection: "close" } })).status;

describe("start-up and readiness", () => {
  const cleanup: Array<() => Promise<void>> = [];
  afterAll(async () => {
    for (const c of cleanup.reverse()) await c().catch(() => {});
  });

  it("item 21: refuses to start with a Redis whose maxmemory-policy is not noeviction, naming the policy and the fix", async () => {
    const redis = await PrivateRedis.start(undefined, ["--maxmemory-policy", "allkeys-lru"]);
    cleanup.push(() => redis.stop());
    await expect(startTestApp({ env: { REDIS_URL: redis.url } })).rejects.toThrow(/maxmemory-policy.*noeviction/);
    // Nothing left connected (the change bus's subscriber stayed open, so a refused process never exited).
    const probe = new Redis(redis.port, "127.0.0.1");
    try {
      await vi.waitFor(async () => expect(String(await probe.client("LIST")).trim().split("\n")).toHaveLength(1), { timeout: 3_000, interval: 50 });
    } finally {
      probe.disconnect();
    }
  });

  it("item 21: with QUOTA_REDIS_ALLOW_EVICTION=true it starts, logs a warning and exports quota_redis_eviction_unsafe 1", async () => {
    const redis = await PrivateRedis.start(undefined, ["--maxmemory-policy", "volatile-lru"]);
    cleanup.push(() => redis.stop());
    const lines: string[] = [];
    const logger = pino({ level: "warn" }, { write: (l: string) => void lines.push(l) });
    const t: TestApp = await startTestApp({ env: { REDIS_URL: redis.url, QUOTA_REDIS_ALLOW_EVICTION: "true" }, logger });
    cleanup.push(() => t.stop());
    expect(lines.some((l) => l.includes("volatile-lru") && l.includes("noeviction"))).toBe(true);
    expect(await t.app.metrics.getSingleMetricAsString("quota_redis_eviction_unsafe")).toMatch(/quota_redis_eviction_unsafe 1/);
    expect(await get(t.app.httpPort, "/readyz")).toBe(200);
  });

  it("item 21: a noeviction Redis starts and reports 0", async () => {
    const redis = await PrivateRedis.start(undefined, ["--maxmemory-policy", "noeviction"]);
    cleanup.push(() => redis.stop());
    const t = await startTestApp({ env: { REDIS_URL: redis.url } });
    cleanup.push(() => t.stop());
    expect(await t.app.metrics.getSingleMetricAsString("quota_redis_eviction_unsafe")).toMatch(/quota_redis_eviction_unsafe 0/);
  });

  it("item 20: Redis unreachable at start: NOT_SERVING and /readyz 503, /healthz 200; ready once Redis answers", async () => {
    const redis = await PrivateRedis.start();
    cleanup.push(() => redis.stop());
    const proxy = await TcpProxy.start(redis.port);
    cleanup.push(() => proxy.close());
    proxy.cut();
    const t = await startTestApp({ env: { REDIS_URL: `redis://127.0.0.1:${proxy.port}` } });
    cleanup.push(() => t.stop());
    expect(await get(t.app.httpPort, "/healthz")).toBe(200);
    expect(await get(t.app.httpPort, "/readyz")).toBe(503);
    expect(await healthCheck(`127.0.0.1:${t.app.grpcPort}`)).toBe("NOT_SERVING");
    expect(await healthCheck(`127.0.0.1:${t.app.grpcPort}`, "quota.v1.QuotaService")).toBe("NOT_SERVING");
    proxy.restore();
    const deadline = Date.now() + 10_000;
    while ((await get(t.app.httpPort, "/readyz")) !== 200 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    expect(await get(t.app.httpPort, "/readyz")).toBe(200);
    expect(await healthCheck(`127.0.0.1:${t.app.grpcPort}`)).toBe("SERVING");
    // Losing Redis later keeps the replica ready (answers come from the plan's failure mode), liveness too.
    proxy.cut();
    await new Promise((r) => setTimeout(r, 300));
    expect(await get(t.app.httpPort, "/readyz")).toBe(200);
    expect(await get(t.app.httpPort, "/healthz")).toBe(200);
  });

  it("item 20: while migrations run: NOT_SERVING and /readyz 503, /healthz 200, calls UNAVAILABLE; ready once they are done", async () => {
    // A database already migrated once; a transaction holding the migrations table makes the next start's migrator wait.
    const db = await createTestDatabase();
    cleanup.push(() => db.drop());
    const prefix = `qa-test:${uniqueId("")}:`;
    cleanup.push(() => deleteRedisPrefix(prefix));
    const env = (grpc: number, http: number) => ({
      QUOTA_HOST: "127.0.0.1", QUOTA_GRPC_PORT: String(grpc), QUOTA_HTTP_PORT: String(http), QUOTA_ADMIN_TOKEN: "test-admin-token",
      QUOTA_LOG_LEVEL: "silent", QUOTA_SHUTDOWN_DELAY_MS: "0", QUOTA_DB_STATEMENT_TIMEOUT_MS: "60000",
      DATABASE_URL: db.url, REDIS_URL: TEST_REDIS_URL, QUOTA_REDIS_KEY_PREFIX: prefix,
    });
    const logger = pino({ level: "silent" });
    const first = await startApp(loadConfig(env(0, 0), {}, undefined), { logger });
    await first.stop();
    const lock = new pg.Client({ connectionString: db.url });
    await lock.connect();
    cleanup.push(() => lock.end());
    await lock.query("begin");
    await lock.query("lock table mikro_orm_migrations in access exclusive mode");
    const grpcPort = await freePort();
    let httpPort = await freePort();
    while (httpPort === grpcPort) httpPort = await freePort();
    const starting = startApp(loadConfig(env(grpcPort, httpPort), {}, undefined), { logger });
    starting.catch(() => {});
    // The ports answer while the migrator waits on the lock.
    const deadline = Date.now() + 20_000;
    let ready = 0;
    while (Date.now() < deadline) {
      ready = await get(httpPort, "/readyz").catch(() => 0);
      if (ready !== 0) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(ready).toBe(503);
    expect(await get(httpPort, "/healthz")).toBe(200);
    expect(await healthCheck(`127.0.0.1:${grpcPort}`)).toBe("NOT_SERVING");
    const c = clients("grpc-js", { grpc: grpcPort, http: httpPort });
    try {
      const e = await c.admin.createAccount({ id: "mig-wait", name: "x" }, ADMIN).catch((x) => x);
      expect(codeOf(e)).toBe(14); // UNAVAILABLE
      expect(messageOf(e)).toMatch(/starting up \(migrations running\)/);
      await lock.query("commit");
      const app = await starting;
      cleanup.push(() => app.stop());
      expect(await get(httpPort, "/readyz")).toBe(200);
      expect(await healthCheck(`127.0.0.1:${grpcPort}`)).toBe("SERVING");
      expect((await c.admin.createAccount({ id: "mig-done", name: "x" }, ADMIN)).account?.id).toBe("mig-done");
    } finally {
      c.close();
    }
  }, 90_000);
});
