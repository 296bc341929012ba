/**
 * Starts the whole service in-process for integration tests: its own Postgres database (created here, dropped on
 * stop), its own Redis key prefix, ports chosen by the OS, and a clock the test controls.
 */
import { Redis } from "ioredis";
import pg from "pg";
import pino from "pino";
import type { CounterStore } from "../../src/core/counter-store.ts";
import { RedisCounterStore } from "../../src/store/redis/redis-counter-store.ts";
import { loadConfig } from "../../src/config/config.ts";
import { startApp, type App } from "../../src/main.ts";
import { ManualClock, TEST_DATABASE_URL, TEST_REDIS_URL, uniqueId } from "./env.ts";
import { deleteRedisPrefix } from "./redis.ts";

export { deleteRedisPrefix };

export interface TestApp {
  app: App;
  clock: ManualClock;
  databaseUrl: string;
  redisPrefix: string;
  stop(): Promise<void>;
}

export async function createTestDatabase(): Promise<{ url: string; drop: () => Promise<void> }> {
  const name = uniqueId("qa_test_").toLowerCase().replace(/[^a-z0-9_]/g, "_");
  const admin = new pg.Client({ connectionString: TEST_DATABASE_URL });
  await admin.connect();
  await admin.query(`create database ${name}`);
  await admin.end();
  const url = new URL(TEST_DATABASE_URL);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    drop: async () => {
      const c = new pg.Client({ connectionString: TEST_DATABASE_URL });
      await c.connect();
      await c.query(`drop database if exists ${name} with (force)`);
      await c.end();
    },
  };
}

export interface TestAppOptions {
  /** Use real Redis (default) or the in-memory store. */
  redis?: boolean;
  /** Use real Postgres (default) or PGlite in memory. */
  postgres?: boolean;
  env?: Record<string, string>;
  clock?: ManualClock | false;
  /** Where the app logs (default: silent). */
  logger?: import("pino").Logger;
  /** Rewrites the test database URL the app uses (e.g. to go through a TcpProxy). */
  wrapDatabaseUrl?: (url: string) => string;
  /** Tracing for the app (observability tests: an in-memory exporter). */
  tracing?: import("../../src/observability/tracing.ts").Tracing;
  /** Fault injection: the app gets `wrapStore(real Redis counter store)` (e.g. one that drops writes on demand).
   * Production code is untouched: the app takes any CounterStore through `AppOptions.store`. */
  wrapStore?: (store: CounterStore) => CounterStore;
}

export async function startTestApp(options: TestAppOptions = {}): Promise<TestApp> {
  const clock = options.clock === false ? undefined : (options.clock ?? new ManualClock(Date.now()));
  const db = options.postgres === false ? undefined : await createTestDatabase();
  const redisPrefix = `qa-test:${uniqueId("")}:`;
  const config = loadConfig(
    {
      QUOTA_HOST: "127.0.0.1",
      QUOTA_GRPC_PORT: "0",
      QUOTA_HTTP_PORT: "0",
      QUOTA_DATA_DIR: "memory://",
      QUOTA_ADMIN_TOKEN: "test-admin-token",
      QUOTA_LOG_LEVEL: "silent",
      QUOTA_STORE_DEADLINE_MS: "2000",
      QUOTA_SHUTDOWN_DELAY_MS: "0",
      // Tests read GetLimits before and after every case; the per-key limit is tested on its own (hardening.test.ts).
      QUOTA_GET_LIMITS_RATE_PER_MINUTE: "0",
      ...(db ? { DATABASE_URL: options.wrapDatabaseUrl ? options.wrapDatabaseUrl(db.url) : db.url } : {}),
      ...(options.redis === false ? {} : { REDIS_URL: TEST_REDIS_URL, QUOTA_REDIS_KEY_PREFIX: redisPrefix }),
      ...options.env,
    },
    {},
    undefined,
  );
  let store: CounterStore | undefined;
  if (options.wrapStore) {
    if (options.redis === false) throw new Error("wrapStore wraps the Redis counter store: needs redis");
    const redis = new Redis(config.redisUrl!, { enableAutoPipelining: true, maxRetriesPerRequest: 1 });
    store = options.wrapStore(new RedisCounterStore(redis, { keyPrefix: config.redisKeyPrefix, ...(clock ? { clock: clock.now } : {}) }));
  }
  const app = await startApp(config, { ...(clock ? { clock } : {}), ...(store ? { store } : {}), ...(options.tracing ? { tracing: options.tracing } : {}), logger: options.logger ?? pino({ level: "silent" }) });
  return {
    app,
    clock: clock ?? new ManualClock(),
    databaseUrl: db?.url ?? "",
    redisPrefix,
    stop: async () => {
      await app.stop();
      if (options.redis !== false) await deleteRedisPrefix(redisPrefix);
      await db?.drop();
    },
  };
}
