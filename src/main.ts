/**
 * Composition root: builds every part from the config, wires them, and shuts them down in order.
 *
 * Shutdown (SIGTERM): health NOT_SERVING -> stop accepting and drain in-flight calls -> flush usage -> close Redis
 * and Postgres -> exit 0.
 */
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { Redis } from "ioredis";
import pino, { type Logger } from "pino";
import { Counter, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type { Config } from "./config/config.ts";
import { redact } from "./config/config.ts";
import { AdminService } from "./core/admin-service.ts";
import { CapacitySync } from "./core/capacity.ts";
import type { CounterStore } from "./core/counter-store.ts";
import { KeyCache } from "./core/key-cache.ts";
import { systemClock, type ChangeBus, type Clock } from "./core/ports.ts";
import { QuotaService } from "./core/quota-service.ts";
import { UsageFlusher } from "./core/usage-flusher.ts";
import { ResourceExhaustedError } from "./core/errors.ts";
import { migrate, openOrm } from "./store/db/orm.ts";
import { MikroDatabase } from "./store/db/mikro-database.ts";
import { InMemoryCounterStore } from "./store/memory/in-memory-counter-store.ts";
import { LocalChangeBus } from "./store/memory/local-change-bus.ts";
import { RedisChangeBus } from "./store/redis/redis-change-bus.ts";
import { RedisCounterStore } from "./store/redis/redis-counter-store.ts";
import { createApi } from "./transport/api.ts";
import { startConnectServer, type RunningConnectServer } from "./transport/connect/connect-server.ts";
import { startGrpcServer, type RunningGrpcServer } from "./transport/grpc/grpc-server.ts";

export interface App {
  config: Config;
  grpcPort: number;
  httpPort: number;
  adminToken: string;
  db: MikroDatabase;
  store: CounterStore;
  quota: QuotaService;
  admin: AdminService;
  flusher: UsageFlusher;
  capacity: CapacitySync;
  metrics: Registry;
  logger: Logger;
  /** Graceful stop; safe to call twice. */
  stop(): Promise<void>;
}

export interface AppOptions {
  /** Injected clock (tests); production uses the system clock and Redis TIME. */
  clock?: Clock;
  logger?: Logger;
  /** Use this counter store instead of building one (tests). */
  store?: CounterStore;
}

export async function startApp(config: Config, options: AppOptions = {}): Promise<App> {
  const logger = options.logger ?? pino({ level: config.logLevel, redact: { paths: ["apiKey", "api_key", "*.apiKey", "secret", "authorization", "*.authorization"], censor: "***" } });
  const clock = options.clock ?? systemClock;
  logger.info({ config: redact(config) }, "starting quota-authority");

  const orm = await openOrm(
    config.databaseUrl
      ? { url: config.databaseUrl, connectTimeoutMs: config.dbConnectTimeoutMs, statementTimeoutMs: config.dbStatementTimeoutMs }
      : { dataDir: config.dataDir },
  );
  const db = new MikroDatabase(orm as never);
  if (config.migrateOnStart) {
    const applied = await migrate(orm);
    if (applied.length) logger.info({ applied }, "migrations applied");
  }

  let redis: Redis | undefined;
  let store: CounterStore;
  let bus: ChangeBus;
  if (options.store) {
    store = options.store;
    bus = new LocalChangeBus();
  } else if (config.redisUrl) {
    redis = new Redis(config.redisUrl, {
      enableAutoPipelining: true,
      maxRetriesPerRequest: 1,
      // Fail fast while disconnected: the deadline + plan failure mode answer instead of a queue that grows.
      enableOfflineQueue: false,
      connectTimeout: 2000,
      retryStrategy: (times) => Math.min(times * 100, 1000),
    });
    redis.on("error", (e) => logger.warn({ err: e.message }, "redis error"));
    store = new RedisCounterStore(redis, { keyPrefix: config.redisKeyPrefix, ...(options.clock ? { clock: options.clock.now } : {}) });
    bus = new RedisChangeBus(redis, `${config.redisKeyPrefix}changes`, {
      warn: (msg, err) => logger.warn({ err: err instanceof Error ? err.message : err }, msg),
      info: (msg) => logger.info(msg),
    });
  } else {
    store = new InMemoryCounterStore(options.clock ? { clock: options.clock.now } : {});
    bus = new LocalChangeBus();
  }

  const metrics = new Registry();
  collectDefaultMetrics({ register: metrics });
  const decisions = new Counter({ name: "quota_decisions_total", help: "CheckAndReserve decisions", labelNames: ["decision", "reason", "mode", "fail_open"], registers: [metrics] });
  const rpcDuration = new Histogram({ name: "quota_rpc_duration_seconds", help: "RPC latency by method and status", labelNames: ["method", "code"], buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1], registers: [metrics] });

  const keys = new KeyCache(db, clock, {
    ttlMs: config.keyCacheTtlMs,
    negativeTtlMs: config.keyCacheNegativeTtlMs,
    maxEntries: config.keyCacheMaxEntries,
    onRefreshError: (keyId, err) => logger.warn({ keyId, err: String(err) }, "key refresh failed; serving the cached entry"),
  });
  bus.subscribe((accountId) => keys.invalidate(accountId));
  const capacity = new CapacitySync({ db, store, clock, bus });
  const flusher = new UsageFlusher({ db, store, clock });
  const quota = new QuotaService({
    db,
    store,
    clock,
    bus,
    keys,
    capacity,
    touched: flusher.touched,
    storeDeadlineMs: config.storeDeadlineMs,
    idempotencyWaitMs: config.idempotencyWaitMs,
    onDecision: (e) => decisions.inc({ decision: e.decision, reason: e.reason, mode: e.mode, fail_open: String(e.failOpen) }),
  });
  const admin = new AdminService({ db, clock, bus, capacity, quota, idempotencyWaitMs: config.idempotencyWaitMs });

  const adminToken = config.adminToken || randomBytes(24).toString("base64url");
  if (!config.adminToken) logger.warn("QUOTA_ADMIN_TOKEN is not set: generated an admin token for this run (see the demo output or set one)");
  const adminCalls = new Map<string, { windowStart: number; count: number }>();
  const api = createApi({
    quota,
    admin,
    auth: { serviceToken: config.serviceToken, adminToken, allowedOrigins: config.allowedOrigins },
    adminLimiter: (credential) => {
      const now = Date.now();
      const w = adminCalls.get(credential);
      if (!w || now - w.windowStart >= 60_000) adminCalls.set(credential, { windowStart: now, count: 1 });
      else if (++w.count > config.adminRatePerMinute) throw new ResourceExhaustedError(`admin API rate limit of ${config.adminRatePerMinute} calls per minute exceeded`);
    },
  });

  if (config.plansFile) {
    const plans = await admin.applyPlans(readFileSync(config.plansFile, "utf8"), config.plansFile);
    logger.info({ plans: plans.map((p) => p.id) }, "plans applied from file");
  }

  let ready = true;
  const tls = config.tlsKeyFile && config.tlsCertFile
    ? {
        key: readFileSync(config.tlsKeyFile),
        cert: readFileSync(config.tlsCertFile),
        requireClientCert: Boolean(config.tlsClientCaFile),
        ...(config.tlsClientCaFile ? { clientCa: readFileSync(config.tlsClientCaFile) } : {}),
      }
    : undefined;
  const onError = (method: string, err: unknown) => logger.error({ method, err }, "internal error");
  const onCall = (method: string, code: string, seconds: number) => {
    rpcDuration.observe({ method, code }, seconds);
    // Access log at debug level: method, status and time only — requests (API keys, tokens) are never logged.
    logger.debug({ method, code, ms: Math.round(seconds * 1e6) / 1e3 }, "rpc");
  };
  const grpc: RunningGrpcServer = await startGrpcServer({ api, host: config.host, port: config.grpcPort, maxMessageBytes: config.maxMessageBytes, ...(tls ? { tls } : {}), onError, onCall });
  const http: RunningConnectServer = await startConnectServer({
    api,
    host: config.host,
    port: config.httpPort,
    maxMessageBytes: config.maxMessageBytes,
    allowedOrigins: config.allowedOrigins,
    ...(tls ? { tls } : {}),
    health: () => ({ live: true, ready }),
    metrics: async () => ({ contentType: metrics.contentType, body: await metrics.metrics() }),
    onError,
    onCall,
  });

  const timers = [
    setInterval(() => void flusher.flush().catch((e) => logger.warn({ err: String(e) }, "usage flush failed")), config.flushIntervalMs),
    setInterval(() => void capacity.reconcile().catch((e) => logger.warn({ err: String(e) }, "reconcile failed")), config.reconcileIntervalMs),
  ];
  for (const t of timers) t.unref();
  logger.info({ grpc: `${config.host}:${grpc.port}`, http: `${config.host}:${http.port}`, database: config.databaseUrl ? "postgres" : `pglite:${config.dataDir}`, counters: config.redisUrl ? "redis" : "memory" }, "serving");

  let stopping: Promise<void> | undefined;
  const stop = () =>
    (stopping ??= (async () => {
      logger.info("shutting down: NOT_SERVING, draining");
      ready = false;
      for (const service of ["", "quota.v1.QuotaService", "quota.v1.QuotaAdminService"]) grpc.health.setStatus(service, "NOT_SERVING");
      for (const t of timers) clearInterval(t);
      // Keep serving while health checkers and load balancers see NOT_SERVING / 503 and move traffic away.
      const delay = Math.min(config.shutdownDelayMs, config.shutdownGraceMs);
      await new Promise((r) => setTimeout(r, delay));
      await Promise.all([grpc.shutdown(config.shutdownGraceMs - delay), http.shutdown(config.shutdownGraceMs - delay)]);
      await flusher.flushAll().catch((e) => logger.warn({ err: String(e) }, "final usage flush failed"));
      await bus.close();
      await store.close();
      redis?.disconnect();
      await db.close();
      logger.info("stopped");
    })());

  return { config, grpcPort: grpc.port, httpPort: http.port, adminToken, db, store, quota, admin, flusher, capacity, metrics, logger, stop };
}
