/**
 * One zod schema for all configuration: environment variables, optionally overlaid on a YAML/JSON file
 * (QUOTA_CONFIG_FILE). Read once at start-up, validated, frozen. Every problem is listed at once; unknown keys in
 * the file are errors (typos caught); secrets are redacted whenever the config is printed.
 */
import { readFileSync } from "node:fs";
import { parse as parseYaml } from "yaml";
import { z } from "zod";
import { envoyConfigSchema } from "../core/envoy-rate-limit.ts";

const schema = z.strictObject({
  /** Address to bind. Sidecar mode binds loopback by default. */
  host: z.string().min(1).default("127.0.0.1"),
  grpcPort: z.coerce.number().int().min(0).max(65535).default(50051),
  httpPort: z.coerce.number().int().min(0).max(65535).default(8080),
  /** postgresql://...; empty = embedded PGlite in dataDir. */
  databaseUrl: z.string().regex(/^postgres(ql)?:\/\//, "must be a postgresql:// URL").or(z.literal("")).default(""),
  /** redis://...; empty = in-process counter store. */
  redisUrl: z.string().regex(/^rediss?(\+cluster)?:\/\//, "must be a redis://, rediss:// or redis+cluster://host:port,host:port URL").or(z.literal("")).default(""),
  /** Redis Cluster seed nodes, "host:port,host:port" (credentials and TLS from REDIS_URL, if given). */
  redisClusterNodes: z.string().default("").transform((s) => s.split(",").map((x) => x.trim()).filter(Boolean))
    .refine((nodes) => nodes.every((n) => /^\[?[^\]\s]+?\]?:\d{1,5}$/.test(n)), "must be host:port,host:port"),
  redisKeyPrefix: z.string().max(64).default("qa:"),
  dataDir: z.string().min(1).default("./data"),
  migrateOnStart: z.stringbool().default(true),
  /** Data-plane bearer token; empty = none required (only sensible on loopback). */
  serviceToken: z.string().default(""),
  /** Admin bearer token; empty = one is generated at start-up and logged once. */
  adminToken: z.string().default(""),
  allowedOrigins: z.string().default("").transform((s) => s.split(",").map((x) => x.trim()).filter(Boolean)),
  /** Counter-store deadline per call (ms): past it, the plan's failure mode answers. */
  storeDeadlineMs: z.coerce.number().int().min(1).max(10_000).default(50),
  /** How often usage is flushed from the counter store to Postgres (ms). */
  flushIntervalMs: z.coerce.number().int().min(100).max(600_000).default(2_000),
  reconcileIntervalMs: z.coerce.number().int().min(100).max(600_000).default(5_000),
  /** How long past a reservation's TTL its settled result, a CANCEL tombstone and its idempotency id are kept for
   * replays (a repeated Release, a resent or repeated CheckAndReserve). Bounds Redis memory per account. */
  retentionGraceMs: z.coerce.number().int().min(1_000).max(86_400_000).default(300_000),
  maxMessageBytes: z.coerce.number().int().min(1024).max(64 * 1024 * 1024).default(1024 * 1024),
  /** Admin API calls per minute per credential. */
  adminRatePerMinute: z.coerce.number().int().min(1).default(600),
  shutdownGraceMs: z.coerce.number().int().min(0).max(120_000).default(10_000),
  /** On SIGTERM, keep serving this long after health turns NOT_SERVING, so probes and load balancers move away. */
  shutdownDelayMs: z.coerce.number().int().min(0).max(120_000).default(1_000),
  logLevel: z.enum(["trace", "debug", "info", "warn", "error", "fatal", "silent"]).default("info"),
  tlsKeyFile: z.string().default(""),
  tlsCertFile: z.string().default(""),
  tlsClientCaFile: z.string().default(""),
  /** A request waits at most this long for a concurrent one with the same idempotency key, then ABORTED (ms). */
  idempotencyWaitMs: z.coerce.number().int().min(1).max(60_000).default(200),
  /** Postgres: connecting (or waiting for a pooled connection) may take this long (ms); a statement this long is
   * cancelled (ms). Together they bound every Postgres call. */
  dbConnectTimeoutMs: z.coerce.number().int().min(100).max(60_000).default(5_000),
  dbStatementTimeoutMs: z.coerce.number().int().min(100).max(600_000).default(5_000),
  /** Key cache: entries are refreshed in the background after this age (ms); stale entries keep serving meanwhile. */
  keyCacheTtlMs: z.coerce.number().int().min(100).max(3_600_000).default(600_000),
  /** Unknown key ids are remembered this long (ms), so a flood of random ids does not reach Postgres. */
  keyCacheNegativeTtlMs: z.coerce.number().int().min(0).max(600_000).default(5_000),
  /** At most this many keys (known and unknown) are cached; the least recently used go first. Unset: what a third
   * of the process's heap limit holds (defaultKeyCacheEntries), at most 100,000. */
  keyCacheMaxEntries: z.coerce.number().int().min(1).max(10_000_000).optional(),
  /** GetLimits calls per minute per API key (and per account for trusted account lookups); 0 = unlimited. */
  getLimitsRatePerMinute: z.coerce.number().int().min(0).max(1_000_000).default(120),
  /** Connections: the request headers must arrive within this (ms), including a new connection's first bytes. */
  headersTimeoutMs: z.coerce.number().int().min(100).max(600_000).default(10_000),
  /** Connections with no request in flight are closed after this (ms), on both ports. */
  idleTimeoutMs: z.coerce.number().int().min(100).max(3_600_000).default(120_000),
  /** HTTP/2: concurrent streams per connection, on both ports. */
  maxConcurrentStreams: z.coerce.number().int().min(1).max(100_000).default(1_000),
  /** Start even when Redis may evict keys (maxmemory-policy other than noeviction): only warn, and export a metric. */
  redisAllowEviction: z.stringbool().default(false),
  /** Seed a demo plan, account, subscription, funded wallet and key, and print a ready-to-paste call. */
  demo: z.stringbool().default(false),
  /** Plans file applied at start-up. */
  plansFile: z.string().default(""),
  /** Envoy rate-limit service mapping (docs/envoy.md): an object in the config file, or YAML/JSON text in the
   * environment (QUOTA_ENVOY_CONFIG). */
  envoy: z
    .preprocess((v, ctx) => {
      if (typeof v !== "string") return v;
      try {
        return parseYaml(v) ?? {};
      } catch (e) {
        ctx.addIssue({ code: "custom", message: `is not valid YAML/JSON: ${(e as Error).message.split("\n")[0]}` });
        return z.NEVER;
      }
    }, envoyConfigSchema)
    .prefault({}),
  /** Server processes sharing the ports (node:cluster), each with its own Redis and Postgres connections. */
  workers: z.coerce.number().int().min(1).max(64).default(1),
});

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|localhost)$/;

/** Rules across fields: TLS files come as a set; an open data plane only on loopback. */
const checked = schema.superRefine((c, ctx) => {
  if (Boolean(c.tlsKeyFile) !== Boolean(c.tlsCertFile)) {
    ctx.addIssue({ code: "custom", path: [c.tlsKeyFile ? "tlsCertFile" : "tlsKeyFile"], message: "TLS needs both a key file and a certificate file" });
  }
  if (c.tlsClientCaFile && !(c.tlsKeyFile && c.tlsCertFile)) {
    ctx.addIssue({ code: "custom", path: ["tlsClientCaFile"], message: "mTLS needs the server's TLS key and certificate files too" });
  }
  if (!LOOPBACK.test(c.host) && !c.serviceToken && !c.tlsClientCaFile) {
    ctx.addIssue({ code: "custom", path: ["serviceToken"], message: `is required (or mTLS) when binding to a non-loopback address (${c.host})` });
  }
  if (c.workers > 1 && (!c.databaseUrl || (!c.redisUrl && c.redisClusterNodes.length === 0))) {
    ctx.addIssue({ code: "custom", path: ["workers"], message: "more than one worker needs DATABASE_URL and REDIS_URL or REDIS_CLUSTER_NODES (the embedded stores live inside one process)" });
  }
  if (c.workers > 1 && c.demo) {
    ctx.addIssue({ code: "custom", path: ["workers"], message: "the demo runs in one process (set no more than 1 worker with --demo)" });
  }
  if (c.adminToken && c.adminToken.length < 16) {
    ctx.addIssue({ code: "custom", path: ["adminToken"], message: "must be at least 16 characters (use 32 random bytes)" });
  }
});

export type Config = Readonly<z.infer<typeof schema>>;

const ENV: Record<string, keyof z.infer<typeof schema>> = {
  QUOTA_HOST: "host",
  QUOTA_GRPC_PORT: "grpcPort",
  QUOTA_HTTP_PORT: "httpPort",
  DATABASE_URL: "databaseUrl",
  REDIS_URL: "redisUrl",
  REDIS_CLUSTER_NODES: "redisClusterNodes",
  QUOTA_REDIS_KEY_PREFIX: "redisKeyPrefix",
  QUOTA_DATA_DIR: "dataDir",
  QUOTA_MIGRATE_ON_START: "migrateOnStart",
  QUOTA_SERVICE_TOKEN: "serviceToken",
  QUOTA_ADMIN_TOKEN: "adminToken",
  QUOTA_ALLOWED_ORIGINS: "allowedOrigins",
  QUOTA_STORE_DEADLINE_MS: "storeDeadlineMs",
  QUOTA_FLUSH_INTERVAL_MS: "flushIntervalMs",
  QUOTA_RECONCILE_INTERVAL_MS: "reconcileIntervalMs",
  QUOTA_RETENTION_GRACE_MS: "retentionGraceMs",
  QUOTA_MAX_MESSAGE_BYTES: "maxMessageBytes",
  QUOTA_ADMIN_RATE_PER_MINUTE: "adminRatePerMinute",
  QUOTA_SHUTDOWN_GRACE_MS: "shutdownGraceMs",
  QUOTA_SHUTDOWN_DELAY_MS: "shutdownDelayMs",
  QUOTA_LOG_LEVEL: "logLevel",
  QUOTA_TLS_KEY_FILE: "tlsKeyFile",
  QUOTA_TLS_CERT_FILE: "tlsCertFile",
  QUOTA_TLS_CLIENT_CA_FILE: "tlsClientCaFile",
  QUOTA_IDEMPOTENCY_WAIT_MS: "idempotencyWaitMs",
  QUOTA_DB_CONNECT_TIMEOUT_MS: "dbConnectTimeoutMs",
  QUOTA_DB_STATEMENT_TIMEOUT_MS: "dbStatementTimeoutMs",
  QUOTA_KEY_CACHE_TTL_MS: "keyCacheTtlMs",
  QUOTA_KEY_CACHE_NEGATIVE_TTL_MS: "keyCacheNegativeTtlMs",
  QUOTA_KEY_CACHE_MAX_ENTRIES: "keyCacheMaxEntries",
  QUOTA_GET_LIMITS_RATE_PER_MINUTE: "getLimitsRatePerMinute",
  QUOTA_HEADERS_TIMEOUT_MS: "headersTimeoutMs",
  QUOTA_IDLE_TIMEOUT_MS: "idleTimeoutMs",
  QUOTA_MAX_CONCURRENT_STREAMS: "maxConcurrentStreams",
  QUOTA_REDIS_ALLOW_EVICTION: "redisAllowEviction",
  QUOTA_DEMO: "demo",
  QUOTA_PLANS_FILE: "plansFile",
  QUOTA_ENVOY_CONFIG: "envoy",
  QUOTA_WORKERS: "workers",
};

const SECRET_KEYS = new Set(["serviceToken", "adminToken", "databaseUrl", "redisUrl"]);

export class ConfigError extends Error {
  readonly problems: string[];
  constructor(problems: string[]) {
    super(`invalid configuration:\n  - ${problems.join("\n  - ")}`);
    this.problems = problems;
  }
}

/** Builds the frozen config from the environment, a config file (QUOTA_CONFIG_FILE or `file`) and overrides. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env, overrides: Partial<Record<string, unknown>> = {}, file = env.QUOTA_CONFIG_FILE): Config {
  let fromFile: Record<string, unknown> = {};
  if (file) {
    try {
      const parsed = parseYaml(readFileSync(file, "utf8")) as unknown;
      if (parsed !== null && typeof parsed !== "object") throw new Error("not a mapping");
      fromFile = (parsed ?? {}) as Record<string, unknown>;
    } catch (e) {
      throw new ConfigError([`${file}: ${(e as Error).message.split("\n")[0]}`]);
    }
  }
  const fromEnv: Record<string, unknown> = {};
  for (const [name, key] of Object.entries(ENV)) if (env[name] !== undefined) fromEnv[key] = env[name];
  const r = checked.safeParse({ ...fromFile, ...fromEnv, ...overrides });
  if (!r.success) {
    const reverse = Object.fromEntries(Object.entries(ENV).map(([k, v]) => [v, k]));
    throw new ConfigError(r.error.issues.map((i) => {
      const key = String(i.path[0] ?? "");
      const inner = i.path.slice(1).map(String).join(".");
      return `${key}${reverse[key] ? ` (${reverse[key]})` : ""}${inner ? `.${inner}` : ""}: ${i.message}`;
    }));
  }
  return Object.freeze(r.data);
}

/** The config with secrets replaced, for logs. */
export function redact(config: Config): Record<string, unknown> {
  return Object.fromEntries(
    Object.entries(config).map(([k, v]) => [k, SECRET_KEYS.has(k) && v ? (typeof v === "string" && /:\/\//.test(v) ? v.replace(/\/\/[^@/]*@/, "//***@") : "***") : v]),
  );
}
