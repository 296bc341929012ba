/**
 * Composition root: builds every part from the config, wires them, and shuts them down in order.
 *
 * Shutdown (SIGTERM): health NOT_SERVING -> stop accepting and drain in-flight calls -> flush usage -> close Redis
 * and Postgres -> exit 0.
 */
import { getHeapStatistics } from "node:v8";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import type { Cluster, Redis } from "ioredis";
import pino, { type Logger } from "pino";
import { Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type { Config } from "./config/config.ts";
import { redact } from "./config/config.ts";
import { AdminService } from "./core/admin-service.ts";
import { CapacitySync } from "./core/capacity.ts";
import type { CounterStore } from "./core/counter-store.ts";
import { KeyCache, KEY_CACHE_BYTES_PER_ENTRY, defaultKeyCacheEntries } from "./core/key-cache.ts";
import { systemClock, type ChangeBus, type Clock } from "./core/ports.ts";
import { QuotaService } from "./core/quota-service.ts";
import { EnvoyRateLimit, storeDeadlineMs } from "./core/envoy-rate-limit.ts";
import { UsageFlusher } from "./core/usage-flusher.ts";
import { AddOnRenewals } from "./core/add-on-billing.ts";
import { ResourceExhaustedError, UnavailableError } from "./core/errors.ts";
import { migrate, openOrm } from "./store/db/orm.ts";
import { MikroDatabase } from "./store/db/mikro-database.ts";
import { InMemoryCounterStore } from "./store/memory/in-memory-counter-store.ts";
import { LocalChangeBus } from "./store/memory/local-change-bus.ts";
import { RedisChangeBus } from "./store/redis/redis-change-bus.ts";
import { RedisCounterStore } from "./store/redis/redis-counter-store.ts";
import { connectRedis, redisTarget } from "./store/redis/connect.ts";
import { createApi, type Api } from "./transport/api.ts";
import { createMetrics, instrumentApi, instrumentDatabase, instrumentStore } from "./observability/metrics.ts";
import { noopTracer, startTracing, tracingWanted, type Tracing } from "./observability/tracing.ts";
import { startConnectServer, type RunningConnectServer } from "./transport/connect/connect-server.ts";
import { staticSite } from "./transport/connect/static-site.ts";
import { startGrpcServer, type RunningGrpcServer } from "./transport/grpc/grpc-server.ts";
import { createEnvoyRlsApi } from "./transport/grpc/envoy-rls.ts";

export interface App {
  config: Config;
  grpcPort: number;
  httpPort: number;
  adminToken: string;
  db: MikroDatabase;
  store: CounterStore;
  quota: QuotaService;
  admin: AdminService;
  /** The transport-neutral API both ports serve (auth, metrics and tracing included): for in-process benches. */
  api: Api;
  flusher: UsageFlusher;
  renewals: AddOnRenewals;
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
  /** Tracing to use (tests: an in-memory exporter); default: from the OTEL_* variables, off unless they ask. */
  tracing?: Tracing;
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

  let redis: Redis | Cluster | undefined;
  const target = redisTarget(config.redisUrl, config.redisClusterNodes);
  let store: CounterStore;
  let bus: ChangeBus;
  if (options.store) {
    store = options.store;
    bus = new LocalChangeBus();
  } else if (target) {
    // Fail fast while disconnected: the deadline + plan failure mode answer instead of a queue that grows.
    redis = connectRedis(target);
    redis.on("error", (e) => logger.warn({ err: e.message }, "redis error"));
    store = new RedisCounterStore(redis, { keyPrefix: config.redisKeyPrefix, retentionGraceMs: config.retentionGraceMs, ...(options.clock ? { clock: options.clock.now } : {}) });
    // ioredis' Cluster publishes and subscribes like a single connection (PUBLISH reaches every node).
    bus = new RedisChangeBus(redis as Redis, `${config.redisKeyPrefix}changes`, {
      warn: (msg, err) => logger.warn({ err: err instanceof Error ? err.message : err }, msg),
      info: (msg) => logger.info(msg),
    });
  } else {
    store = new InMemoryCounterStore({ retentionGraceMs: config.retentionGraceMs, ...(options.clock ? { clock: options.clock.now } : {}) });
    bus = new LocalChangeBus();
  }

  // A start that fails half way (Redis that may evict, a port taken, migrations failing, a bad plans file) closes what it opened, so the
  // process exits with the error instead of lingering, never ready, on the listeners and connections it holds.
  let grpcStarted: RunningGrpcServer | undefined;
  let httpStarted: RunningConnectServer | undefined;
  const failStart = async (e: unknown): Promise<never> => {
    await Promise.all([grpcStarted?.shutdown(0), httpStarted?.shutdown(0)]);
    await bus.close();
    redis?.disconnect();
    await orm.close(true);
    throw e;
  };

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
    const r = redis as Redis;
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
        await failStart(new Error(`refusing to start: redis maxmemory-policy is not noeviction (see the log); set it to noeviction, or QUOTA_REDIS_ALLOW_EVICTION=true to serve anyway`));
      }
    } else {
      logger.warn("redis not reachable at start-up: not ready until it is");
    }
  }
  const tracing = options.tracing ?? (tracingWanted(process.env) ? startTracing() : undefined);
  const tracer = tracing?.tracer;
  const m = createMetrics(metrics);
  // Redis and Postgres latency/errors and their spans are taken at the port boundary: the core sees the same ports.
  const idb = instrumentDatabase(db, m, tracer);
  store = instrumentStore(store, redis ? "redis" : "memory", m, tracer);
  const rpcDuration = new Histogram({ name: "quota_rpc_duration_seconds", help: "RPC latency by method and status", labelNames: ["method", "code"], buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1], registers: [metrics] });

  const heapLimit = getHeapStatistics().heap_size_limit;
  const keyCacheMax = config.keyCacheMaxEntries ?? defaultKeyCacheEntries(heapLimit);
  if (keyCacheMax * KEY_CACHE_BYTES_PER_ENTRY > heapLimit) {
    logger.warn({ maxEntries: keyCacheMax, heapLimitMB: Math.round(heapLimit / 2 ** 20), mayNeedMB: Math.round((keyCacheMax * KEY_CACHE_BYTES_PER_ENTRY) / 2 ** 20) },
      "QUOTA_KEY_CACHE_MAX_ENTRIES may not fit in this process's heap: give the container more memory or cache fewer keys");
  }
  const keys = new KeyCache(idb, clock, {
    ttlMs: config.keyCacheTtlMs,
    negativeTtlMs: config.keyCacheNegativeTtlMs,
    maxEntries: keyCacheMax,
    onRefreshError: (keyId, err) => logger.warn({ keyId, err: String(err) }, "key refresh failed; serving the cached entry"),
    onLookup: m.keyCacheLookup,
  });
  bus.subscribe((accountId) => keys.invalidate(accountId));
  const capacity = new CapacitySync({ db: idb, store, clock, bus, onMarkError: (accountIds, err) => logger.warn({ accounts: accountIds.length, err: String(err) }, "marking restored accounts synced failed; the reconciler re-syncs them") });
  // Its account configurations are dropped by the change bus like the key cache's entries; their TTL stays at most
  // 60 s all the same: a lost PUBLISH would otherwise leave a new budget's spend unposted for the key cache's TTL.
  const flusher = new UsageFlusher({ db: idb, store, clock, configTtlMs: Math.min(config.keyCacheTtlMs, 60_000), onAccountError: (accountId, err) => logger.warn({ accountId, err: String(err) }, "usage flush of an account failed") });
  bus.subscribe(flusher.invalidate);
  const adminToken = config.adminToken || randomBytes(24).toString("base64url");
  if (!config.adminToken) logger.warn("QUOTA_ADMIN_TOKEN is not set: generated an admin token for this run (see the demo output or set one)");
  const quotaDeps = { leaseSecret: adminToken, db: idb, store, clock, bus, keys, capacity, touched: flusher.touched, idempotencyWaitMs: config.idempotencyWaitMs };
  const quota = new QuotaService({ ...quotaDeps, storeDeadlineMs: config.storeDeadlineMs, getLimitsRatePerMinute: config.getLimitsRatePerMinute });
  const admin = new AdminService({ db: idb, clock, bus, capacity, quota, idempotencyWaitMs: config.idempotencyWaitMs });
  const renewals = new AddOnRenewals({ db: idb, clock });
  // Envoy's rate-limit service: the same core with its own, shorter counter-store deadline (below Envoy's timeout).
  const envoyQuota = new QuotaService({ ...quotaDeps, storeDeadlineMs: storeDeadlineMs(config.envoy) });
  const envoyRateLimit = new EnvoyRateLimit({
    quota: envoyQuota,
    config: config.envoy,
    clock,
    onCommitError: (err) => logger.warn({ err: String(err) }, "envoy: immediate commit failed; the reservation settles at its TTL"),
  });

  const adminCalls = new Map<string, { windowStart: number; count: number }>();
  const api = instrumentApi(createApi({
    quota,
    admin,
    gate: () => {
      if (!started) throw new UnavailableError("starting up (migrations running); retry shortly");
    },
    auth: { serviceToken: config.serviceToken, adminToken, allowedOrigins: config.allowedOrigins },
    onInternalError: (method, err) => logger.error({ method, err }, "internal error"),
    adminLimiter: (credential) => {
      const now = Date.now();
      const w = adminCalls.get(credential);
      if (!w || now - w.windowStart >= 60_000) adminCalls.set(credential, { windowStart: now, count: 1 });
      else if (++w.count > config.adminRatePerMinute) throw new ResourceExhaustedError(`admin API rate limit of ${config.adminRatePerMinute} calls per minute exceeded`);
    },
  }), { metrics: m, tracer: tracer ?? noopTracer(), keys });

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
  const envoy = createEnvoyRlsApi({ rateLimit: envoyRateLimit, auth: { serviceToken: config.serviceToken, adminToken, allowedOrigins: config.allowedOrigins } });
  const grpc: RunningGrpcServer = grpcStarted = await startGrpcServer({ api, envoy, host: config.host, port: config.grpcPort, maxMessageBytes: config.maxMessageBytes, idleTimeoutMs: config.idleTimeoutMs, maxConcurrentStreams: config.maxConcurrentStreams, ...(tls ? { tls } : {}), onError, onCall }).catch(failStart);
  // Not ready until the checks below pass (the health service starts out SERVING).
  for (const service of ["", "quota.v1.QuotaService", "quota.v1.QuotaAdminService", "envoy.service.ratelimit.v3.RateLimitService"]) grpc.health.setStatus(service, "NOT_SERVING");
  // The usage dashboard (web/dist, built by `npm run build:web` and checked in) at /dashboard/.
  const site = staticSite({ root: fileURLToPath(new URL("../web/dist", import.meta.url)) });
  if (!site) logger.warn("web/dist/index.html not found: the dashboard is not served (npm run build:web)");
  const http: RunningConnectServer = httpStarted = await startConnectServer({
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
    ...(site ? { site } : {}),
  }).catch(failStart);

  const services = ["", "quota.v1.QuotaService", "quota.v1.QuotaAdminService", "envoy.service.ratelimit.v3.RateLimitService"];
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
      await failStart(e);
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
    const file = config.plansFile;
    const plans = await (async () => admin.applyPlans(readFileSync(file, "utf8"), file))().catch(failStart);
    logger.info({ plans: plans.map((p) => p.id) }, "plans applied from file");
  }
  started = true;
  onReadinessChange();

  const timers = [
    setInterval(() => void pingDatabase(), 5_000),
    setInterval(() => void flusher.flush().then(m.flushed, (e) => logger.warn({ err: String(e) }, "usage flush failed")), config.flushIntervalMs),
    setInterval(
      () => void renewals.run((subscriptionId, err) => logger.warn({ subscriptionId, err: String(err) }, "add-on renewal failed")).catch((e) => logger.warn({ err: String(e) }, "add-on renewals failed")),
      config.reconcileIntervalMs,
    ),
    setInterval(
      () => void capacity.reconcile(100, (accountId, err) => logger.warn({ accountId, err: String(err) }, "reconcile of an account failed")).then(m.reconciled, (e) => logger.warn({ err: String(e) }, "reconcile failed")),
      config.reconcileIntervalMs,
    ),
  ];
  for (const t of timers) t.unref();
  logger.info({ grpc: `${config.host}:${grpc.port}`, http: `${config.host}:${http.port}`, database: config.databaseUrl ? "postgres" : `pglite:${config.dataDir}`, counters: target ? (target.kind === "cluster" ? "redis-cluster" : "redis") : "memory" }, "serving");

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
      await tracing?.shutdown().catch((e) => logger.warn({ err: String(e) }, "trace export failed"));
      logger.info("stopped");
    })());

  return { config, grpcPort: grpc.port, httpPort: http.port, adminToken, db, store, quota, admin, api, flusher, capacity, renewals, keys, metrics, logger, stop };
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
