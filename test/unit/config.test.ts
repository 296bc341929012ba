import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ConfigError, loadConfig, redact } from "../../src/config/config.ts";
import { defaultKeyCacheEntries, KEY_CACHE_BYTES_PER_ENTRY } from "../../src/core/key-cache.ts";

describe("configuration", () => {
  it("has working defaults: loopback, embedded stores", () => {
    const c = loadConfig({});
    expect(c).toMatchObject({ host: "127.0.0.1", grpcPort: 50051, httpPort: 8080, databaseUrl: "", redisUrl: "", storeDeadlineMs: 50 });
    expect(Object.isFrozen(c)).toBe(true);
  });

  it("lists every problem at once, naming the variable", () => {
    let err: ConfigError | undefined;
    try {
      loadConfig({ QUOTA_GRPC_PORT: "70000", DATABASE_URL: "mysql://x", QUOTA_LOG_LEVEL: "loud" });
    } catch (e) {
      err = e as ConfigError;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect(err!.problems).toHaveLength(3);
    expect(err!.message).toContain("grpcPort (QUOTA_GRPC_PORT)");
    expect(err!.message).toContain("databaseUrl (DATABASE_URL)");
    expect(err!.message).toContain("logLevel (QUOTA_LOG_LEVEL)");
  });

  it("rejects unknown keys in a config file (typos), and the environment overrides the file", () => {
    const dir = mkdtempSync(join(tmpdir(), "qa-config-"));
    const bad = join(dir, "bad.yaml");
    writeFileSync(bad, "grpcPrt: 1\n");
    expect(() => loadConfig({}, {}, bad)).toThrow(/grpcPrt/);
    const good = join(dir, "good.yaml");
    writeFileSync(good, "grpcPort: 6000\nhttpPort: 6001\n");
    expect(loadConfig({ QUOTA_HTTP_PORT: "7001" }, {}, good)).toMatchObject({ grpcPort: 6000, httpPort: 7001 });
  });

  it("checks fields together: TLS files as a set, no open data plane off loopback, strong admin tokens", () => {
    expect(() => loadConfig({ QUOTA_TLS_KEY_FILE: "k.pem" })).toThrow(/tlsCertFile.*both a key file and a certificate/);
    expect(() => loadConfig({ QUOTA_TLS_CLIENT_CA_FILE: "ca.pem" })).toThrow(/tlsClientCaFile/);
    expect(() => loadConfig({ QUOTA_HOST: "0.0.0.0" })).toThrow(/serviceToken.*non-loopback/);
    expect(loadConfig({ QUOTA_HOST: "0.0.0.0", QUOTA_SERVICE_TOKEN: "t" }).host).toBe("0.0.0.0");
    expect(() => loadConfig({ QUOTA_ADMIN_TOKEN: "short" })).toThrow(/adminToken.*16 characters/);
  });

  it("accepts several workers only with shared stores (Postgres + Redis), never with the demo", () => {
    const shared = { DATABASE_URL: "postgresql://u@h/db", REDIS_URL: "redis://h:6379" };
    expect(loadConfig({ ...shared, QUOTA_WORKERS: "2" }).workers).toBe(2);
    expect(loadConfig({}).workers).toBe(1);
    expect(() => loadConfig({ QUOTA_WORKERS: "2" })).toThrow(/workers \(QUOTA_WORKERS\): more than one worker needs DATABASE_URL and REDIS_URL or REDIS_CLUSTER_NODES/);
    expect(() => loadConfig({ DATABASE_URL: shared.DATABASE_URL, QUOTA_WORKERS: "2" })).toThrow(/QUOTA_WORKERS/);
    expect(() => loadConfig({ ...shared, QUOTA_WORKERS: "2", QUOTA_DEMO: "true" })).toThrow(/workers.*demo/);
    expect(() => loadConfig({ ...shared, QUOTA_WORKERS: "0" })).toThrow(/workers \(QUOTA_WORKERS\)/);
    expect(() => loadConfig({ ...shared, QUOTA_WORKERS: "two" })).toThrow(/workers \(QUOTA_WORKERS\)/);
    // A Redis Cluster is a shared store too, named by REDIS_CLUSTER_NODES alone or by a redis+cluster:// URL.
    expect(loadConfig({ DATABASE_URL: shared.DATABASE_URL, REDIS_CLUSTER_NODES: "h1:7000,h2:7001", QUOTA_WORKERS: "2" }).workers).toBe(2);
    expect(loadConfig({ DATABASE_URL: shared.DATABASE_URL, REDIS_URL: "redis+cluster://h1:7000,h2:7001", QUOTA_WORKERS: "2" }).workers).toBe(2);
    expect(() => loadConfig({ REDIS_CLUSTER_NODES: "h1:7000", QUOTA_WORKERS: "2" })).toThrow(/QUOTA_WORKERS.*DATABASE_URL/);
  });

  it("redacts secrets and URL credentials when printed", () => {
    const c = loadConfig({ QUOTA_ADMIN_TOKEN: "s3cret-s3cret-s3cret", DATABASE_URL: "postgresql://user:pw@db:5432/q", REDIS_URL: "redis://:pw@r:6379" });
    const shown = JSON.stringify(redact(c));
    expect(shown).not.toContain("s3cret");
    expect(shown).not.toContain("pw@");
    expect(shown).toContain("postgresql://***@db:5432/q");
  });

  it("the key cache bound defaults to what the process's heap holds (unset), and an explicit value is kept", () => {
    expect(loadConfig({}).keyCacheMaxEntries).toBeUndefined();
    expect(loadConfig({ QUOTA_KEY_CACHE_MAX_ENTRIES: "250000" }).keyCacheMaxEntries).toBe(250_000);
    // A 512 MiB container gives Node a ~259 MB heap: 100,000 keys (~4.7 KB each, plus ~70 MB of modules) do not fit.
    expect(defaultKeyCacheEntries(259 * 2 ** 20)).toBeLessThanOrEqual(12_000);
    expect(defaultKeyCacheEntries(259 * 2 ** 20) * KEY_CACHE_BYTES_PER_ENTRY).toBeLessThan((259 * 2 ** 20) / 2);
    expect(defaultKeyCacheEntries(560 * 2 ** 20)).toBeGreaterThan(defaultKeyCacheEntries(259 * 2 ** 20));
    expect(defaultKeyCacheEntries(4288 * 2 ** 20)).toBe(100_000); // a host-sized heap: the old default, at most
    expect(defaultKeyCacheEntries(1)).toBe(1_000); // never below
  });

  it("issue 7 keys: defaults, environment names and bounds", () => {
    expect(loadConfig({})).toMatchObject({
      idempotencyWaitMs: 200,
      dbConnectTimeoutMs: 5_000,
      dbStatementTimeoutMs: 5_000,
      keyCacheTtlMs: 600_000,
      keyCacheNegativeTtlMs: 5_000,
      getLimitsRatePerMinute: 120,
      headersTimeoutMs: 10_000,
      idleTimeoutMs: 120_000,
      maxConcurrentStreams: 1_000,
      redisAllowEviction: false,
    });
    const c = loadConfig({
      QUOTA_IDEMPOTENCY_WAIT_MS: "250",
      QUOTA_DB_CONNECT_TIMEOUT_MS: "300",
      QUOTA_DB_STATEMENT_TIMEOUT_MS: "400",
      QUOTA_KEY_CACHE_TTL_MS: "1000",
      QUOTA_KEY_CACHE_NEGATIVE_TTL_MS: "0",
      QUOTA_KEY_CACHE_MAX_ENTRIES: "10",
      QUOTA_GET_LIMITS_RATE_PER_MINUTE: "0",
      QUOTA_HEADERS_TIMEOUT_MS: "500",
      QUOTA_IDLE_TIMEOUT_MS: "600",
      QUOTA_MAX_CONCURRENT_STREAMS: "7",
      QUOTA_REDIS_ALLOW_EVICTION: "true",
    });
    expect(c).toMatchObject({ idempotencyWaitMs: 250, dbConnectTimeoutMs: 300, dbStatementTimeoutMs: 400, keyCacheTtlMs: 1000, keyCacheNegativeTtlMs: 0, keyCacheMaxEntries: 10, getLimitsRatePerMinute: 0, headersTimeoutMs: 500, idleTimeoutMs: 600, maxConcurrentStreams: 7, redisAllowEviction: true });
    let err: ConfigError | undefined;
    try {
      loadConfig({ QUOTA_DB_STATEMENT_TIMEOUT_MS: "0", QUOTA_KEY_CACHE_MAX_ENTRIES: "0", QUOTA_MAX_CONCURRENT_STREAMS: "-1", QUOTA_REDIS_ALLOW_EVICTION: "maybe" });
    } catch (e) {
      err = e as ConfigError;
    }
    expect(err!.problems).toHaveLength(4);
    expect(err!.message).toContain("dbStatementTimeoutMs (QUOTA_DB_STATEMENT_TIMEOUT_MS)");
    expect(err!.message).toContain("redisAllowEviction (QUOTA_REDIS_ALLOW_EVICTION)");
  });
});
