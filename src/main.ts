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
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type { Config } from "./config/config.ts";
import { redact } from "./config/config.ts";
import { AdminService } from "./core/admin-service.ts";
import { CapacitySync } from "./core/capacity.ts";
import type { CounterStore } from "./core/counter-store.ts";
import { KeyCache } from "./core/key-cache.ts";
import { systemClock, type ChangeBus, type Clock } from "./core/ports.ts";
import { QuotaService } from "./core/quota-service.ts";
import { UsageFlusher } from "./core/usage-flusher.ts";
import { ResourceExhaustedError, UnavailableError } from "./core/errors.ts";
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
  keys: KeyCache;
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
  const dependencyUp = new Gauge({ name: "quota_dependency_up", help: "1 while the dependency answers (redis, postgres)", labelNames: ["dependency"], registers: [metrics] });
  const evictionUnsafe = new Gauge({ name: "quota_redis_eviction_unsafe", help: "1 when Redis may evict keys (maxmemory-policy is not noeviction): usage can be lost and over-admitted", registers: [metrics] });

  // Readiness = "can answer by policy": migrations done, Postgres reached once, the counter store reached once
  // (with a safe eviction policy). Losing a dependency later does not make a replica unready — the hot path
  // answers from cache and by the plan's failure mode, and taking every replica out on a blip would turn a
  // partial outage into a total one; quota_dependency_up shows it instead. Liveness depends on nothing.
  const readiness = { migrated: false, database: false, store: !redis, evictionOk: true, stopping: false };
  const isReady = () => readiness.migrated && readiness.database && readiness.store && readiness.evictionOk && !readiness.stopping;
  let onReadinessChange = () => {};
  if (redis) {
    const r = redis;
    const checkRedis = async () => {
      let policy: string;
      try {
        policy = await redisEvictionPolicy(r);
      } catch (e) {
        logger.warn({ err: String(e) }, "redis maxmemory-policy could not be read");
        return;
      }
      const safe = policy === "noeviction";
      evictionUnsafe.set(safe ? 0 : 1);
      if (!safe) {
        const msg = `redis maxmemory-policy is ${policy}: Redis may evict usage counters, reservations and capacity, which silently resets usage and over-admits; set maxmemory-policy noeviction`;
        if (config.redisAllowEviction) logger.warn({ policy }, `${msg} (QUOTA_REDIS_ALLOW_EVICTION=true: serving anyway)`);
        else {
          logger.error({ policy }, `${msg}, or set QUOTA_REDIS_ALLOW_EVICTION=true to serve anyway`);
          readiness.evictionOk = false;
        }
      } else readiness.evictionOk = true;
      readiness.store = true;
      onReadinessChange();
    };
    r.on("ready", () => {
      dependencyUp.set({ dependency: "redis" }, 1);
      void checkRedis();
    });
    r.on("close", () => dependencyUp.set({ dependency: "redis" }, 0));
    // At start-up: wait (bounded) for Redis; a reachable Redis that may evict keys stops the start.
    if (await waitReady(r, 3_000)) {
      await checkRedis();
      if (!readiness.evictionOk) {
        r.disconnect();
        await orm.close(true);
        throw new Error(`refusing to start: redis maxmemory-policy is not noeviction (see the log); set it to noeviction, or QUOTA_REDIS_ALLOW_EVICTION=true to serve anyway`);
      }
    } else {
      logger.warn("redis not reachable at start-up: not ready until it is");
    }
  }
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
    getLimitsRatePerMinute: config.getLimitsRatePerMinute,
    onDecision: (e) => decisions.inc({ decision: e.decision, reason: e.reason, mode: e.mode, fail_open: String(e.failOpen) }),
  });
  const admin = new AdminService({ db, clock, bus, capacity, quota, idempotencyWaitMs: config.idempotencyWaitMs });

  const adminToken = config.adminToken || randomBytes(24).toString("base64url");
  if (!config.adminToken) logger.warn("QUOTA_ADMIN_TOKEN is not set: generated an admin token for this run (see the demo output or set one)");
  const adminCalls = new Map<string, { windowStart: number; count: number }>();
  const api = createApi({
    quota,
    admin,
    gate: () => {
      if (!started) throw new UnavailableError("starting up (migrations running); retry shortly");
    },
    auth: { serviceToken: config.serviceToken, adminToken, allowedOrigins: config.allowedOrigins },
    adminLimiter: (credential) => {
      const now = Date.now();
      const w = adminCalls.get(credential);
      if (!w || now - w.windowStart >= 60_000) adminCalls.set(credential, { windowStart: now, count: 1 });
      else if (++w.count > config.adminRatePerMinute) throw new ResourceExhaustedError(`admin API rate limit of ${config.adminRatePerMinute} calls per minute exceeded`);
    },
  });

  let started = false;

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
  const grpc: RunningGrpcServer = await startGrpcServer({ api, host: config.host, port: config.grpcPort, maxMessageBytes: config.maxMessageBytes, idleTimeoutMs: config.idleTimeoutMs, maxConcurrentStreams: config.maxConcurrentStreams, ...(tls ? { tls } : {}), onError, onCall });
  // Not ready until the checks below pass (the health service starts out SERVING).
  for (const service of ["", "quota.v1.QuotaService", "quota.v1.QuotaAdminService"]) grpc.health.setStatus(service, "NOT_SERVING");
  const http: RunningConnectServer = await startConnectServer({
    api,
    host: config.host,
    port: config.httpPort,
    maxMessageBytes: config.maxMessageBytes,
    allowedOrigins: config.allowedOrigins,
    headersTimeoutMs: config.headersTimeoutMs,
    idleTimeoutMs: config.idleTimeoutMs,
    maxConcurrentStreams: config.maxConcurrentStreams,
    ...(tls ? { tls } : {}),
    health: () => ({ live: true, ready: isReady() }),
    metrics: async () => ({ contentType: metrics.contentType, body: await metrics.metrics() }),
    onError,
    onCall,
  });

  const services = ["", "quota.v1.QuotaService", "quota.v1.QuotaAdminService"];
  let servingNow: boolean | undefined;
  onReadinessChange = () => {
    const now = isReady();
    if (now === servingNow) return;
    servingNow = now;
    for (const service of services) grpc.health.setStatus(service, now ? "SERVING" : "NOT_SERVING");
    logger.info({ ready: now, ...readiness }, now ? "ready" : "not ready");
  };
  onReadinessChange();

  // Migrations run while both ports answer health (NOT_SERVING, /readyz 503, /healthz 200) and calls UNAVAILABLE.
  if (config.migrateOnStart) {
    try {
      const applied = await migrate(orm);
      if (applied.length) logger.info({ applied }, "migrations applied");
    } catch (e) {
      await Promise.all([grpc.shutdown(0), http.shutdown(0)]);
      redis?.disconnect();
      await orm.close(true);
      throw e;
    }
  }
  readiness.migrated = true;
  const pingDatabase = async () => {
    try {
      await db.ping();
      dependencyUp.set({ dependency: "postgres" }, 1);
      if (!readiness.database) {
        readiness.database = true;
        onReadinessChange();
      }
    } catch {
      dependencyUp.set({ dependency: "postgres" }, 0);
    }
  };
  await pingDatabase();
  if (config.plansFile) {
    const plans = await admin.applyPlans(readFileSync(config.plansFile, "utf8"), config.plansFile);
    logger.info({ plans: plans.map((p) => p.id) }, "plans applied from file");
  }
  started = true;
  onReadinessChange();

  const timers = [
    setInterval(() => void pingDatabase(), 5_000),
    setInterval(() => void flusher.flush().catch((e) => logger.warn({ err: String(e) }, "usage flush failed")), config.flushIntervalMs),
    setInterval(() => void capacity.reconcile().catch((e) => logger.warn({ err: String(e) }, "reconcile failed")), config.reconcileIntervalMs),
  ];
  for (const t of timers) t.unref();
  logger.info({ grpc: `${config.host}:${grpc.port}`, http: `${config.host}:${http.port}`, database: config.databaseUrl ? "postgres" : `pglite:${config.dataDir}`, counters: config.redisUrl ? "redis" : "memory" }, "serving");

  let stopping: Promise<void> | undefined;
  const stop = () =>
    (stopping ??= (async () => {
      logger.info("shutting down: NOT_SERVING, draining");
      readiness.stopping = true;
      for (const service of services) grpc.health.setStatus(service, "NOT_SERVING");
      for (const t of timers) clearInterval(t);
      // Keep serving while health checkers and load balancers see NOT_SERVING / 503 and move traffic away.
      const delay = Math.min(config.shutdownDelayMs, config.shutdownGraceMs);
      await new Promise((r) => setTimeout(r, delay));
      await Promise.all([grpc.shutdown(config.shutdownGraceMs - delay), http.shutdown(config.shutdownGraceMs - delay)]);
      await flusher.flushAll().catch((e) => logger.warn({ err: String(e) }, "final usage flush failed"));
      await bus.close();
      await store.close();
      redis?.disconnect();
      // Bounded: a connection lost mid-query (a black-holed Postgres) can keep the pool from ending.
      const closed = await Promise.race([db.close().then(() => true), new Promise<false>((r) => setTimeout(() => r(false), 5_000).unref())]);
      if (!closed) logger.warn("postgres pool did not close within 5 s; exiting anyway");
      logger.info("stopped");
    })());

  return { config, grpcPort: grpc.port, httpPort: http.port, adminToken, db, store, quota, admin, flusher, capacity, keys, metrics, logger, stop };
}

/** Redis' eviction policy, from INFO (CONFIG GET is renamed or disabled on some managed services). */
async function redisEvictionPolicy(redis: Redis): Promise<string> {
  const info = await redis.info("memory");
  const m = /^maxmemory_policy:(\S+)/m.exec(info);
  if (!m) throw new Error("INFO memory has no maxmemory_policy");
  return m[1]!;
}

/** Resolves true once the connection is ready, false after `ms`. */
function waitReady(redis: Redis, ms: number): Promise<boolean> {
  if (redis.status === "ready") return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      redis.off("ready", onReady);
      resolve(false);
    }, ms);
    const onReady = () => {
      clearTimeout(timer);
      resolve(true);
    };
    redis.once("ready", onReady);
  });
}
