/**
 * Benchmark: CheckAndReserve (+ Release) throughput and latency through the real gRPC port, against real Redis and
 * Postgres (or the embedded default with --embedded). Loopback only; every loop is bounded in count and time.
 *
 *   npm run bench -- [--embedded] [--calls 20000] [--concurrency 64] [--seconds 20] [--release | --envoy]
 *
 * --envoy calls Envoy's RateLimitService/ShouldRateLimit (one descriptor carrying the key and the method) instead of
 * CheckAndReserve; its immediate commit (a Release) follows each answer.
 *
 * Prints one JSON line per scenario. Numbers depend on the machine; see docs/capacity.md for how to read them.
 */
import { parseArgs } from "node:util";
import pino from "pino";
import { Decision } from "../src/gen/quota/v1/types_pb.ts";
import { Outcome } from "../src/gen/quota/v1/quota_pb.ts";
import { loadConfig } from "../src/config/config.ts";
import { startApp } from "../src/main.ts";
import { createTestDatabase, deleteRedisPrefix } from "../test/support/app.ts";
import { ADMIN, clients } from "../test/support/clients.ts";
import { rlsClient } from "../test/support/envoy-client.ts";

const { values } = parseArgs({
  options: {
    embedded: { type: "boolean", default: false },
    calls: { type: "string", default: "20000" },
    concurrency: { type: "string", default: "64" },
    seconds: { type: "string", default: "20" },
    release: { type: "boolean", default: false },
    envoy: { type: "boolean", default: false },
  },
});
const calls = Math.min(Number(values.calls), 1_000_000);
const concurrency = Math.min(Number(values.concurrency), 1024);
const deadline = Date.now() + Math.min(Number(values.seconds), 120) * 1000;

const db = values.embedded ? undefined : await createTestDatabase();
const prefix = `qa-bench:${process.pid}:`;
const config = loadConfig({
  QUOTA_HOST: "127.0.0.1",
  QUOTA_GRPC_PORT: "0",
  QUOTA_HTTP_PORT: "0",
  QUOTA_DATA_DIR: "memory://",
  QUOTA_ADMIN_TOKEN: "test-admin-token",
  QUOTA_STORE_DEADLINE_MS: "1000",
  QUOTA_ENVOY_CONFIG: JSON.stringify({ deadlineMs: 1000, domains: { bench: { product: "api" } } }),
  ...(db ? { DATABASE_URL: db.url, REDIS_URL: process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379", QUOTA_REDIS_KEY_PREFIX: prefix } : {}),
});
const app = await startApp(config, { logger: pino({ level: "silent" }) });
const c = clients("grpc-js", { grpc: app.grpcPort, http: app.httpPort });
const rls = rlsClient(app.grpcPort);
try {
  await c.admin.applyPlans(
    {
      document: `
plans:
  - id: bench
    name: bench
    methods: { default: 10, costs: { eth_call: 20 } }
    limits:
      - { name: monthly, kind: quota, limit: 1000000000000, period: monthly }
      - { name: daily, kind: quota, limit: 1000000000000, period: daily }
      - { name: rps, kind: rate, scope: key, limit: 1000000, window: 1s }
      - { name: in-flight, kind: concurrency, scope: key, limit: 100000 }
`,
    },
    ADMIN,
  );
  await c.admin.createAccount({ id: "bench", name: "bench" }, ADMIN);
  const sub = await c.admin.createSubscription({ accountId: "bench", planId: "bench" }, ADMIN);
  const key = await c.admin.createApiKey({ accountId: "bench", subscriptionId: sub.subscription!.id, name: "bench" }, ADMIN);
  const envoyCall = { domain: "bench", descriptors: [{ entries: [{ key: "api_key", value: key.apiKey }, { key: "method", value: "eth_call" }] }] };
  const one = values.envoy
    ? async () => {
        const r = await rls.shouldRateLimit(envoyCall);
        return r.overallCode === 1 && r.dynamicMetadata?.decision === "ALLOWED" && !r.dynamicMetadata?.fail_open;
      }
    : async () => {
        const a = await c.quota.checkAndReserve({ apiKey: key.apiKey, product: "api", method: "eth_call" });
        if (values.release && a.decision === Decision.ALLOWED) await c.quota.release({ reservationId: a.reservationId, outcome: Outcome.COMMIT });
        return a.decision === Decision.ALLOWED;
      };
  // Warm up: key cache, script load, connections.
  for (let i = 0; i < 200; i++) await one();

  const latencies: number[] = [];
  let next = 0;
  let allowed = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < calls && Date.now() < deadline) {
        next++;
        const t0 = performance.now();
        const ok = await one();
        latencies.push(performance.now() - t0);
        if (ok) allowed++;
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  const pct = (p: number) => Number(latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))]!.toFixed(3));
  console.log(
    JSON.stringify({
      scenario: `${values.envoy ? "Envoy ShouldRateLimit (+ immediate commit)" : values.release ? "CheckAndReserve+Release" : "CheckAndReserve"} over gRPC, 4 limits, ${values.embedded ? "embedded (PGlite + memory)" : "Redis + Postgres"}`,
      calls: latencies.length,
      allowed,
      concurrency,
      seconds: Number(seconds.toFixed(2)),
      perSecond: Math.round(latencies.length / seconds),
      latencyMs: { p50: pct(50), p90: pct(90), p99: pct(99), max: pct(100) },
      node: process.version,
    }),
  );
} finally {
  rls.close();
  c.close();
  await app.stop();
  if (db) {
    await deleteRedisPrefix(prefix);
    await db.drop();
  }
}
