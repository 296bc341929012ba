/**
 * In-process measure of the PROCESS side of CheckAndReserve (no gRPC framing, no load generator competing for the
 * CPU): the app is started in this process (Postgres for plans and keys; counters in memory, or in a private
 * redis-server with --redis), then the server's QuotaService API (auth, metrics and tracing wrappers included) is
 * called directly with a decoded request and its
 * answer is encoded to protobuf bytes, as the gRPC handler does. Reports this process's CPU µs per call
 * (process.cpuUsage over the measured window; with --redis it includes ioredis encode/decode, not Redis itself).
 *
 *   sh scripts/node bench/hot-path.ts [--redis] [--calls 20000] [--concurrency 32] [--accounts 10] [--plan l3]
 *   sh scripts/node --cpu-prof --cpu-prof-dir=/tmp/prof bench/hot-path.ts ...   (then bench/profile-top.ts)
 *
 * Also reports the process's RSS and heap once every key is cached (run node with --expose-gc for the live heap):
 *   sh scripts/node --expose-gc bench/hot-path.ts --redis --accounts 100000 --calls 100000
 *
 * Also reports the JS heap bytes the measured window allocated per call (heapAllocBytesPerCall: the used heap at its
 * end, plus what every collection in it freed; exact to the byte, unlike CPU time on a shared machine, and it counts
 * the bench's own request decoding and answer encoding, as the gRPC handler would do them) and the collections in it.
 * For where it is allocated, --heap-profile FILE writes a sampling allocation profile of the measured window only,
 * garbage included (node's own --heap-prof keeps only what is still alive at exit), summarized by
 *   sh scripts/node bench/heap-profile-top.ts FILE
 *
 * --cold measures FIRST touches instead (the call that loads a key from Postgres and restores its account's counters,
 * as after a restart): --accounts N more accounts are seeded, the warm-up touches only the first N (V8 optimized), then
 * each of the other N is called once in the window; reports CPU µs and Postgres calls per first touch:
 *   sh scripts/node bench/hot-path.ts --redis --cold --accounts 5000 --concurrency 64
 *
 * --heap-snapshot FILE writes a V8 heap snapshot once every key is cached (after the measured window), to see
 * what a cached account costs (Chrome DevTools, Memory tab; compare two account counts).
 *
 * Bounded: at most 200,000 calls, 100,000 accounts and 60 s of load. Loopback only.
 */
import { writeFileSync } from "node:fs";
import { Session } from "node:inspector/promises";
import { parseArgs } from "node:util";
import { GCProfiler, getHeapSpaceStatistics, getHeapStatistics, writeHeapSnapshot } from "node:v8";
import pino from "pino";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { CheckAndReserveRequestSchema, ReleaseRequestSchema } from "../src/gen/quota/v1/quota_pb.ts";
import { decodeCheckAndReserveRequest } from "../src/transport/grpc/check-request-wire.ts";
import { encodeCheckAndReserveResponse } from "../src/transport/grpc/check-response-wire.ts";
import { loadConfig } from "../src/config/config.ts";
import { startApp } from "../src/main.ts";
import { ROOT, PLANS, createDatabase, redisCounters, seedAccounts, startRedis } from "./lib/env.ts";
import { loadAverage } from "./lib/stats.ts";

const { values: o } = parseArgs({
  options: {
    redis: { type: "boolean", default: false },
    calls: { type: "string", default: "20000" },
    concurrency: { type: "string", default: "32" },
    accounts: { type: "string", default: "10" },
    plan: { type: "string", default: "l3" },
    release: { type: "boolean", default: false },
    cold: { type: "boolean", default: false },
    "heap-snapshot": { type: "string" },
    "heap-profile": { type: "string" },
  },
});
const calls = Math.min(Number(o.calls), 200_000);
const concurrency = Math.min(Number(o.concurrency), 1024);
const accounts = Math.min(Number(o.accounts), 100_000);

const db = await createDatabase();
const redis = o.redis ? await startRedis() : undefined;
const plansFile = `${ROOT}bench/results/.plans-hot.yaml`;
writeFileSync(plansFile, PLANS);
const config = loadConfig(
  {
    QUOTA_HOST: "127.0.0.1",
    QUOTA_GRPC_PORT: "0",
    QUOTA_HTTP_PORT: "0",
    DATABASE_URL: db.url,
    ...(redis ? { REDIS_URL: redis.url, QUOTA_REDIS_KEY_PREFIX: "qa:" } : {}),
    QUOTA_ADMIN_TOKEN: "bench-admin-token",
    QUOTA_LOG_LEVEL: "silent",
    QUOTA_PLANS_FILE: plansFile,
    QUOTA_SHUTDOWN_DELAY_MS: "0",
    // The machine is shared and loaded: a 50 ms store deadline would turn slow scripts into UNAVAILABLE denials.
    QUOTA_STORE_DEADLINE_MS: "2000",
  },
  {},
  undefined,
);
const app = await startApp(config, { logger: pino({ level: "silent" }) });
const seeded = await seedAccounts(db.url, o.plan, o.cold ? accounts * 2 : accounts, "hot");
// --cold: the warm-up's keys, then the window's (each called once: its first touch).
const keys = o.cold ? seeded.slice(0, accounts) : seeded;
const coldKeys = seeded.slice(accounts);
// The API as the gRPC handler calls it: auth, metrics and (no-op) tracing included (src/main.ts instrumentApi).
const api = app.api.quota;
const ctx = { header: () => undefined, peerVerified: false };
// Requests as the gRPC handler sees them: decoded from bytes.
const frameOf = (k: string) => Buffer.from(toBinary(CheckAndReserveRequestSchema, create(CheckAndReserveRequestSchema, { apiKey: k, product: "api", method: "GetThing" })));
let frames = keys.map(frameOf);

let done = 0;
let bytes = 0;
async function one(i: number): Promise<void> {
  // As the gRPC port decodes it (src/transport/grpc/grpc-server.ts: grpc-js hands it a Buffer).
  const req = decodeCheckAndReserveRequest(frames[i % frames.length]!);
  const res = await api.checkAndReserve(req, ctx);
  if (res.reservationId === "") throw new Error(`denied: ${res.reason}`);
  // As the gRPC port serializes it (src/transport/grpc/grpc-server.ts).
  bytes += encodeCheckAndReserveResponse(res).length;
  if (o.release) await api.release(fromBinary(ReleaseRequestSchema, toBinary(ReleaseRequestSchema, create(ReleaseRequestSchema, { reservationId: res.reservationId }))), ctx);
}
async function run(n: number, deadline: number): Promise<number> {
  let next = 0;
  let count = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < n && Date.now() < deadline) {
        await one(next++);
        count++;
      }
    }),
  );
  return count;
}

// Warm-up: restores every account and lets V8 optimize; then the measured window.
// Every account is touched (first touch: key load + restore from Postgres) before the window: up to 120 s.
await run(Math.max(keys.length * 2, Math.min(5000, calls / 4)), Date.now() + Math.min(120_000, 20_000 + keys.length * 10));
const dbCalls = async () => {
  const m = (await app.metrics.getMetricsAsJSON()).find((x) => x.name === "quota_db_duration_seconds");
  const out: Record<string, number> = {};
  for (const v of (m?.values ?? []) as Array<{ metricName?: string; labels: Record<string, string>; value: number }>) if (v.metricName === "quota_db_duration_seconds_count") out[v.labels.op!] = v.value;
  return out;
};
if (o.cold) frames = coldKeys.map(frameOf);
const db0 = await dbCalls();
// Script calls in the window (Redis mode): concurrent calls of one account go as one script call, so what a call
// allocates depends on how many share one (fewer when the process is slower, e.g. a loaded machine).
const scripts = async () => (redis ? (await redisCounters(redis.client)).commands.evalsha?.calls ?? 0 : 0);
const scripts0 = await scripts();
const load0 = loadAverage();
const inspector = o["heap-profile"] ? new Session() : undefined;
if (inspector) {
  inspector.connect();
  // Every sampled allocation, also those collected before the profile is taken: what a call allocates, not keeps.
  await inspector.post("HeapProfiler.startSampling", { samplingInterval: 4096, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true } as object);
}
const gcs = new GCProfiler();
const used0 = getHeapStatistics().used_heap_size;
gcs.start();
const cpu0 = process.cpuUsage();
const t0 = process.hrtime.bigint();
done = await run(o.cold ? coldKeys.length : calls, Date.now() + 60_000);
const wall = Number(process.hrtime.bigint() - t0) / 1e9;
const cpu = process.cpuUsage(cpu0);
const used1 = getHeapStatistics().used_heap_size;
const window = gcs.stop();
// Allocated = what was used at the end, plus what each collection freed (its heap before minus the one after the
// previous collection), from the heap used at the start.
let allocated = 0;
let after = used0;
const collections: Record<string, number> = {};
for (const g of window.statistics) {
  allocated += g.beforeGC.heapStatistics.usedHeapSize - after;
  after = g.afterGC.heapStatistics.usedHeapSize;
  collections[g.gcType] = (collections[g.gcType] ?? 0) + 1;
}
allocated += used1 - after;
if (inspector) {
  const { profile } = await inspector.post("HeapProfiler.stopSampling");
  writeFileSync(o["heap-profile"]!, JSON.stringify(profile));
  inspector.disconnect();
}
const us = (cpu.user + cpu.system) / done;
// Memory with every key cached (run with --expose-gc for the live heap after a full collection).
(globalThis as { gc?: () => void }).gc?.();
const mem = process.memoryUsage();
if (o["heap-snapshot"]) writeHeapSnapshot(o["heap-snapshot"]);
const db1 = await dbCalls();
const scriptCalls = (await scripts()) - scripts0;
const postgresCalls = Object.fromEntries(Object.entries(db1).map(([op, n]) => [op, n - (db0[op] ?? 0)]).filter(([, n]) => (n as number) > 0));
console.log(
  JSON.stringify({
    counters: redis ? "redis" : "memory",
    plan: o.plan,
    release: o.release,
    calls: done,
    ...(o.cold ? { firstTouches: done, postgresCallsPerFirstTouch: Math.round((Object.values(postgresCalls) as number[]).reduce((a, b) => a + b, 0) / done * 100) / 100 } : {}),
    concurrency,
    accounts,
    cpuUsPerCall: Math.round(us * 10) / 10,
    userUs: Math.round((cpu.user / done) * 10) / 10,
    callsPerSec: Math.round(done / wall),
    heapAllocBytesPerCall: Math.round(allocated / done),
    collectionsInWindow: collections,
    ...(redis ? { callsPerScript: Math.round((done / scriptCalls) * 10) / 10 } : {}),
    responseBytes: Math.round(bytes / done),
    rssMB: Math.round(mem.rss / 1048576),
    heapUsedMB: Math.round(mem.heapUsed / 104857.6) / 10,
    heapTotalMB: Math.round(mem.heapTotal / 1048576),
    externalMB: Math.round(mem.external / 1048576),
    arrayBuffersMB: Math.round(mem.arrayBuffers / 1048576),
    heapBytesPerAccount: Math.round(mem.heapUsed / accounts),
    // Where heapTotal's size is, by V8 space (MB of each space's size / used after the collection above).
    heapSpacesMB: Object.fromEntries(getHeapSpaceStatistics().map((s) => [s.space_name, [Math.round(s.space_size / 1048576), Math.round(s.space_used_size / 1048576)]])),
    postgresCallsInWindow: postgresCalls,
    loadAverage: load0,
  }),
);
await app.stop();
await redis?.stop();
await db.drop();
process.exit(0);
