/**
 * `npm run bench`: issue 8's side-by-side benchmark. Loopback only; every loop bounded in count and time.
 *
 *   npm run bench                       full run (~13-15 minutes on a 2-core VM, with 100,000 accounts in the cost curve)
 *   npm run bench -- --quick            short run (~1.5-3 minutes: 1 round, 2 s per scenario, curve up to 1,000 accounts)
 *   npm run bench -- --seconds 5 --rounds 2 --concurrency 64 --connections 1 --accounts 10
 *                    --curve-accounts 10,1000,100000 --curve-limits 1,3,6 --open-rates 250,500,1000,2000
 *                    --open-accounts 10000 --only a,b,c,d --h2load --workers 2 --profile --out bench/results
 *                    --batch 100 --batch-concurrency 8 --lease-calls 1000 --lease-decisions 50000000 --lease-prefetch 0
 *                    --cluster-shards 1,3
 *
 * One private redis-server (free port) and a fresh Postgres database serve every scenario; the scenarios run
 * alternated (a b c d e f, then again) so drift on a shared machine hits them alike:
 *   (a) redis-benchmark EVALSHA of our reserve.lua with the exact arguments our server sends (the Redis ceiling)
 *   (b) rate-limiter-flexible RateLimiterRedis.consume() in its own process (what a Node user would pick)
 *   (c) a bare grpc-js server doing one EVALSHA of a comparable 3-limit script (bench/floor-server.ts, the floor)
 *   (d) our server (`bin/quota-authority serve`, Redis + Postgres, plan "l3": monthly quota, per-key rate, concurrency)
 *   (e) our batch path: CheckAndReserveBatch of --batch items (default 100, keys round-robin inside each message),
 *       --batch-concurrency messages in flight (default 8); reported in decisions/s, latency per message
 *   (f) our lease path (bench/lease.ts): a calling process deciding locally under leases of --lease-calls calls
 *       (default 1,000) on plan "lq1" (one quota: leases refuse rate/concurrency), --concurrency callers; reported in
 *       decisions/s, latency of the Lease RPCs; checks the quota counter moved by exactly the admitted decisions.
 *       --lease-holder client (default): the decisions are checkAndReserve calls of @quota-authority/client with
 *       leases on, as a calling service makes them; raw: bench/lease.ts's own holder, which takes the next lease of
 *       a key once --lease-prefetch (0..1, default 0: at once) of the current one is used
 *   (e)/(f) are probed first: "not available" when the server answers UNIMPLEMENTED
 * Load for (c)/(d) comes from bench/load.ts (its own process, raw node:http2, pre-encoded frames, many keys);
 * --h2load adds Debian h2load rows (one key: h2load sends one body file for every stream).
 * --flush-interval-ms N sets our server's QUOTA_FLUSH_INTERVAL_MS (default 2,000; e.g. 600000: no usage flush during
 * the run, to see what the flusher's passes add to the open loop's tail).
 * --embedded runs our server on the embedded default (PGlite + in-process counters) instead.
 * --warm-seconds N (default 120, at most 900) bounds the warm-up that touches the open loop's and each curve point's
 * accounts once first; the curve records how many it touched (`warmedAccounts`): the rest are first touches in the
 * window. --server-node-args "..." passes node flags to our server (NODE_OPTIONS of bin/quota-authority).
 * --cluster-shards 1,3 then runs our server on a private Redis Cluster of 1 and of 3 masters (CheckAndReserve, the
 * headline accounts; Redis CPU summed over the masters). The cost curve reports the server's RSS at each point.
 * Writes bench/results/<name>.json, latency-vs-load.png and cost-curve.png (gnuplot, installed with apt when root).
 */
import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import * as http2 from "node:http2";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { cpus } from "node:os";
import { parseArgs } from "node:util";
import { Redis } from "ioredis";
import { checkAndReserveFrame } from "./lib/grpc-wire.ts";
import { ROOT, SERVICE_TOKEN, createDatabase, ensureTool, freePort, redisCounters, seedAccounts, seedViaAdmin, startRedis, startServer, track, type ServerHandle } from "./lib/env.ts";
import type { LoadResult, LoadSpec } from "./load.ts";
import { cpuSeconds, loadAverage, machineCpu, round3 } from "./lib/stats.ts";
import { drawCharts } from "./lib/chart.ts";
import { PrivateRedisCluster } from "../test/support/redis-cluster.ts";

/** The SHA1 our server's reserve script is registered under (defineScripts: lib.lua, a newline, reserve.lua). */
const RESERVE_SHA = createHash("sha1")
  .update(`${readFileSync(`${ROOT}src/store/redis/scripts/lib.lua`, "utf8")}\n${readFileSync(`${ROOT}src/store/redis/scripts/reserve.lua`, "utf8")}`)
  .digest("hex");

const { values: o } = parseArgs({
  options: {
    quick: { type: "boolean", default: false },
    seconds: { type: "string" },
    rounds: { type: "string" },
    calls: { type: "string", default: "2000000" },
    concurrency: { type: "string", default: "64" },
    connections: { type: "string", default: "1" },
    accounts: { type: "string", default: "10" },
    "curve-accounts": { type: "string" },
    "curve-limits": { type: "string", default: "1,3,6" },
    "open-rates": { type: "string" },
    "open-accounts": { type: "string" },
    "flush-interval-ms": { type: "string" },
    only: { type: "string", default: "a,b,c,d,e,f,mixes,open,curve" },
    h2load: { type: "boolean", default: false },
    workers: { type: "string", default: "1" },
    profile: { type: "boolean", default: false },
    out: { type: "string", default: "bench/results" },
    name: { type: "string" },
    embedded: { type: "boolean", default: false },
    batch: { type: "string", default: "100" },
    "batch-concurrency": { type: "string", default: "8" },
    "lease-calls": { type: "string", default: "1000" },
    "lease-decisions": { type: "string", default: "50000000" },
    "lease-prefetch": { type: "string", default: "0" },
    "lease-holder": { type: "string", default: "client" },
    "cluster-shards": { type: "string", default: "" },
    // Extra node flags for our server (e.g. "--max-semi-space-size=64" to compare with the launcher's default).
    "server-node-args": { type: "string", default: "" },
    // Bound of the warm-up that touches the open loop's and each curve point's accounts once (first touches: a key
    // load and a restore each, ~300-400/s here): 120 s leaves most of 100,000 accounts cold for the window.
    "warm-seconds": { type: "string", default: "120" },
  },
});
const quick = o.quick;
const seconds = Math.min(Number(o.seconds ?? (quick ? 2 : 5)), 60);
const rounds = Math.min(Number(o.rounds ?? (quick ? 1 : 2)), 5);
const calls = Math.min(Number(o.calls), 5_000_000);
const concurrency = Math.min(Number(o.concurrency), 1024);
const connections = Math.min(Number(o.connections), 64);
const accounts = Math.min(Number(o.accounts), o.embedded ? 10_000 : 100_000);
const curveAccounts = (o["curve-accounts"] ?? (quick ? "10,1000" : "10,1000,100000")).split(",").map(Number).filter((n) => n > 0 && n <= (o.embedded ? 10_000 : 100_000));
const curveLimits = o["curve-limits"].split(",").map(Number).filter((n) => [1, 3, 6].includes(n));
const openRates = (o["open-rates"] ?? (quick ? "500,1000,2000" : "250,500,1000,2000,4000")).split(",").map(Number).filter((n) => n > 0 && n <= 50_000);
const warmSeconds = Math.min(Math.max(Number(o["warm-seconds"]) || 120, 1), 900);
const openAccounts = Math.min(Number(o["open-accounts"] ?? (quick ? 1000 : 10_000)), o.embedded ? 10_000 : 100_000);
const only = new Set(o.only.split(","));
// --embedded: our server on the embedded default (PGlite in memory + in-process counters); accounts are created
// through the admin API (its database is inside the server), so at most 10,000. (a)-(c) still use the private Redis.
const embedded = o.embedded;
const workers = Math.max(1, Math.min(Number(o.workers), 16));
// --cluster-shards 1,3: our server again on a private Redis Cluster of that many masters (after everything else).
const clusterShards = o["cluster-shards"].split(",").map(Number).filter((n) => n >= 1 && n <= 6);
const batchSize = Math.max(1, Math.min(Number(o.batch), 1000));
const batchConcurrency = Math.max(1, Math.min(Number(o["batch-concurrency"]), 256));
const leaseCalls = Math.max(1, Math.min(Number(o["lease-calls"]), 100_000));
const leasePrefetch = Math.max(0, Math.min(Number(o["lease-prefetch"]), 1));
const leaseDecisions = Math.max(1, Math.min(Number(o["lease-decisions"]), 200_000_000));
if (o["lease-holder"] !== "client" && o["lease-holder"] !== "raw") throw new Error(`--lease-holder: must be client or raw, got ${o["lease-holder"]}`);
const leaseHolder = o["lease-holder"];
const outDir = `${ROOT}${o.out.replace(/\/$/, "")}/`;
mkdirSync(outDir, { recursive: true });
const runName = o.name ?? `bench-${new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-")}`;

const log = (...a: unknown[]) => console.error(...a);
// Interrupted: exit through process.exit so the children (server, Redis, generators) are killed (lib/env.ts).
for (const sig of ["SIGINT", "SIGTERM"] as const) process.once(sig, () => process.exit(130));
/** Set by measure(): opens its CPU window when the next load process is connected and about to start. */
let pendingWindowStart: (() => Promise<void>) | undefined;
const nodeBin = process.execPath;

// ---------------------------------------------------------------------------------------------------------------
// The world: private Redis, fresh database, our server, the floor server, seeded accounts.
log(`bench: ${cpus().length} cores, load average ${loadAverage().join(" ")}, node ${process.version}`);
const redis = await startRedis();
const db = await createDatabase();
const procs: Record<string, number> = { redis: redis.pid };
let server: ServerHandle | undefined;
let floor: Awaited<ReturnType<typeof startFloor>> | undefined;
const results: Record<string, unknown> = {};
const tmp = `${outDir}.tmp-${process.pid}/`;
mkdirSync(tmp, { recursive: true });

try {
  server = await startServer({
    databaseUrl: embedded ? "" : db.url,
    redisUrl: embedded ? "" : redis.url,
    // The GetLimits mix measures GetLimits, not its per-key rate limit (120 a minute by default: over 10 keys most of
    // the mix was answered RESOURCE_EXHAUSTED before, 2026-12-03).
    env: { QUOTA_GET_LIMITS_RATE_PER_MINUTE: "0", ...(workers > 1 ? { QUOTA_WORKERS: String(workers) } : {}), ...(o["flush-interval-ms"] ? { QUOTA_FLUSH_INTERVAL_MS: String(Number(o["flush-interval-ms"])) } : {}) },
    nodeArgs: [...o["server-node-args"].split(" ").filter(Boolean), ...(o.profile ? ["--cpu-prof", `--cpu-prof-dir=${tmp}profile`] : [])],
  });
  procs.server = server.pid;
  floor = await startFloor(redis.url);
  procs.floor = floor.pid;

  // Accounts: the headline set (plan l3) first, then what the curve and the open loop need.
  const maxL3 = Math.max(accounts, only.has("curve") && curveLimits.includes(3) ? Math.max(...curveAccounts) : 0, only.has("open") ? openAccounts : 0);
  const t0 = performance.now();
  const seed = (plan: string, n: number, tag: string) => (embedded ? seedViaAdmin(server!.grpcPort, server!.httpPort, plan, n, tag) : seedAccounts(db.url, plan, n, tag));
  const keys: Record<number, string[]> = { 3: await seed("l3", maxL3, "l3") };
  if (only.has("curve")) {
    for (const l of curveLimits) if (l !== 3) keys[l] = await seed(`l${l}`, Math.max(...curveAccounts), `l${l}`);
  }
  // (f): accounts of their own on the one-quota plan (so (d)/(e) traffic does not move the counters it checks).
  const leaseKeys = only.has("f") ? await seed("lq1", accounts, "lq1") : [];
  log(`seeded ${Object.values(keys).reduce((n, k) => n + k.length, 0)} accounts in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  const keysFile = (limits: number, n: number) => {
    const f = `${tmp}keys-l${limits}-${n}.txt`;
    writeFileSync(f, keys[limits]!.slice(0, n).join("\n"));
    return f;
  };

  // Warm up both servers (JIT, key cache, first-touch restore of the headline accounts).
  const headKeys = keysFile(3, accounts);
  // Long enough for V8 to have optimized the hot path: with 2 s the first round of (d) measured ~1.8x the CPU per
  // call of the second (2026-12-02), a warm-up artefact, not a cost of the service.
  await load(server.grpcPort, { keysFile: headKeys, mix: "reserve", seconds: quick ? 3 : 6, calls: Math.max(20_000, accounts * 2) });
  await load(floor.port, { keysFile: headKeys, mix: "reserve", seconds: quick ? 2 : 3, calls: 10_000 });

  // (a) needs the exact EVALSHA our server sends: capture one with MONITOR.
  // It runs on an account of its own: the reservations redis-benchmark leaves (until their TTL) must not make the
  // headline accounts' scripts (sweep) dearer for the scenarios after it.
  let captured: string[] | undefined;
  if (only.has("a") && !embedded) {
    const ceilingKey = `${tmp}keys-ceiling.txt`;
    writeFileSync(ceilingKey, (await seedAccounts(db.url, "l3", 1, "ceiling")).join("\n"));
    captured = await captureReserve(redis.url, server.grpcPort, ceilingKey);
  }

  // ---------------------------------------------------------------------------------------------------------------
  // Side by side, alternated.
  type Row = Measured & { scenario: string; round: number };
  const side: Row[] = [];
  const unavailable: Record<string, string> = {};
  const scenarios: Array<{ id: string; what: string; run: () => Promise<Measured | string> }> = [
    { id: "a", what: "redis-benchmark EVALSHA reserve.lua (Redis ceiling)", run: () => (captured ? redisBenchmark(captured) : Promise.resolve(embedded ? "not run: --embedded (our server does not use Redis)" : "no EVALSHA captured")) },
    { id: "b", what: "rate-limiter-flexible RateLimiterRedis.consume() in-process", run: () => rateLimiterFlexible() },
    { id: "c", what: "bare grpc-js + one EVALSHA, 3 limits (floor)", run: () => measure(["floor"], () => load(floor!.port, { keysFile: headKeys, mix: "reserve" })) },
    { id: "d", what: `our server CheckAndReserve, 3 limits${embedded ? " (embedded: PGlite + in-process counters)" : ""}`, run: () => measure(["server"], () => load(server!.grpcPort, { keysFile: headKeys, mix: "reserve" })) },
    { id: "e", what: `our batch path, CheckAndReserveBatch of ${batchSize} (3 limits), ${batchConcurrency} in flight: decisions/s, latency per message`, run: async () => (await probe(server!.grpcPort, "CheckAndReserveBatch")) ?? measure(["server"], () => load(server!.grpcPort, { keysFile: headKeys, mix: "batch", batch: batchSize, concurrency: batchConcurrency, calls: Math.ceil(calls / batchSize) })) },
    { id: "f", what: `our lease path (${leaseHolder === "client" ? "@quota-authority/client" : "raw holder"}, leases of ${leaseCalls}, 1 quota, decisions in the calling process): decisions/s, latency of Lease RPCs`, run: async () => (await probe(server!.grpcPort, "Lease")) ?? leasePath(server!.grpcPort, leaseKeys) },
  ];
  for (let round = 1; round <= rounds; round++) {
    for (const s of scenarios) {
      if (!only.has(s.id)) continue;
      const r = await s.run();
      if (typeof r === "string") {
        unavailable[s.id] = r;
        continue;
      }
      side.push({ scenario: s.id, round, ...r });
      log(fmtRow(`${s.id} r${round}`, r));
      if (r.denied > 0) log(`${s.id} r${round}: ${r.allowed} allowed, ${r.denied} denied${r.deniedUnavailable ? ` (${r.deniedUnavailable} with reason UNAVAILABLE: store deadline, fail closed; not counted as decisions)` : ""}`);
    }
  }
  const summary: Record<string, Measured & { what: string }> = {};
  for (const s of scenarios) {
    const rows = side.filter((r) => r.scenario === s.id);
    if (rows.length) summary[s.id] = { what: s.what, ...average(rows) };
  }
  const ratio = (x: string, y: string) => (summary[x] && summary[y] ? round3(summary[x]!.opsPerSecond / summary[y]!.opsPerSecond) : `n/a (${!summary[x] ? `${x}: ${unavailable[x] ?? "not run"}` : `${y}: ${unavailable[y] ?? "not run"}`})`);
  const ratios = { "d/c": ratio("d", "c"), "d/a": ratio("d", "a"), "e/c": ratio("e", "c"), "e/d": ratio("e", "d"), "f/b": ratio("f", "b") };
  results.sideBySide = { summary, ratios, unavailable, rounds: side };

  // ---------------------------------------------------------------------------------------------------------------
  // Mixes on our server (and the floor where it has the RPC).
  if (only.has("mixes")) {
    const mixes: Record<string, Measured> = {};
    mixes["d pair"] = await measure(["server"], () => load(server!.grpcPort, { keysFile: headKeys, mix: "pair" }));
    log(fmtRow("d pair", mixes["d pair"]));
    mixes["c pair"] = await measure(["floor"], () => load(floor!.port, { keysFile: headKeys, mix: "pair" }));
    log(fmtRow("c pair", mixes["c pair"]));
    mixes["d limits"] = await measure(["server"], () => load(server!.grpcPort, { keysFile: headKeys, mix: "limits" }));
    log(fmtRow("d limits", mixes["d limits"]));
    results.mixes = mixes;
  }
  if (o.h2load) {
    const h: Record<string, Measured | string> = {};
    if (!ensureTool("h2load", "nghttp2-client")) h.note = "h2load not found and not installable (not root?)";
    else {
      h["c h2load"] = await measure(["floor"], () => h2load(floor!.port, keys[3]![0]!));
      h["d h2load"] = await measure(["server"], () => h2load(server!.grpcPort, keys[3]![0]!));
      log(fmtRow("c h2load", h["c h2load"] as Measured));
      log(fmtRow("d h2load", h["d h2load"] as Measured));
    }
    results.h2load = h;
  }

  // ---------------------------------------------------------------------------------------------------------------
  // Open loop: latency against offered load, over `openAccounts` accounts.
  if (only.has("open")) {
    const openKeys = keysFile(3, openAccounts);
    const warm = await load(server.grpcPort, { keysFile: openKeys, mix: "reserve", seconds: warmSeconds, calls: openAccounts });
    log(`open-loop warm-up: ${openAccounts} accounts touched once at ${warm.opsPerSecond}/s (first touch: key load + restore)`);
    const open: Array<{ target: string; rate: number } & Measured> = [];
    // (z) first at every rate: the machine's own latency (generator, loopback, scheduler) with no service behind it.
    const echo = await startEcho();
    procs.echo = echo.pid;
    for (const rate of openRates) {
      for (const [target, port, proc] of [["z", echo.port, "echo"], ["c", floor.port, "floor"], ["d", server.grpcPort, "server"]] as const) {
        const m = await measure([proc], () => load(port, { keysFile: openKeys, mix: "reserve", loop: "open", rate, calls: Math.ceil(rate * seconds) }));
        open.push({ target, rate, ...m });
        log(fmtRow(`${target} open ${rate}/s`, m));
      }
    }
    await echo.stop();
    delete procs.echo;
    results.openLoop = { accounts: openAccounts, points: open };
  }

  // ---------------------------------------------------------------------------------------------------------------
  // Cost curve: throughput and p99 by accounts and limits per call (closed loop, our server).
  if (only.has("curve")) {
    const curve: Array<{ accounts: number; limits: number; warmPerSecond: number; warmedAccounts: number; rssMB: number } & Measured> = [];
    for (const limits of curveLimits) {
      for (const n of curveAccounts) {
        const f = keysFile(limits, n);
        const warm = await load(server.grpcPort, { keysFile: f, mix: "reserve", seconds: warmSeconds, calls: Math.max(n, 500) });
        const m = await measure(["server"], () => load(server!.grpcPort, { keysFile: f, mix: "reserve" }));
        const rssMB = rssOf(server.pid);
        curve.push({ accounts: n, limits, warmPerSecond: warm.opsPerSecond, warmedAccounts: Math.min(n, warm.ops), rssMB, ...m });
        log(`${fmtRow(`curve ${limits} limits ${n} accounts`, m)}  server RSS ${rssMB} MB  warmed ${Math.min(n, warm.ops)} of ${n} accounts first`);
      }
    }
    results.costCurve = curve;
  }

  // Past one Redis: our server on a private Redis Cluster of 1 and of 3 masters (ioredis Cluster: no
  // auto-pipelining, ADR 15), the headline accounts, CheckAndReserve closed loop. Redis CPU is the sum over masters.
  if (clusterShards.length > 0) {
    const rows: Array<{ shards: number; opsPerSecond: number; latencyMs: LoadResult["latencyMs"]; errors: number; serverCpuUsPerOp: number; serverPercentOfCore: number; redisCpuUsPerOp: number; redisPercentOfCore: number; perShardPercentOfCore: number[] }> = [];
    for (const shards of clusterShards) {
      const cluster = await PrivateRedisCluster.start(shards);
      const nodes = cluster.ports.map((p) => new Redis(p, "127.0.0.1", { maxRetriesPerRequest: 1 }));
      let cs: ServerHandle | undefined;
      try {
        cs = await startServer({ databaseUrl: db.url, redisUrl: "", env: { REDIS_CLUSTER_NODES: cluster.ports.map((p) => `127.0.0.1:${p}`).join(",") } });
        const f = keysFile(3, accounts);
        // Warmed as long as the main server (a 2 s warm-up measured V8's not-yet-optimized code: ~1.8x the CPU per call).
        await load(cs.grpcPort, { keysFile: f, mix: "reserve", seconds: quick ? 3 : 6, calls: Math.max(20_000, accounts * 2) });
        const redisCpu = async () => Promise.all(nodes.map(async (n) => (await redisCounters(n)).cpu));
        let before: { t: number; server: number; nodes: number[] } | undefined;
        pendingWindowStart = async () => {
          before = { t: performance.now(), server: cpuSeconds(cs!.pid), nodes: await redisCpu() };
        };
        const r = await load(cs.grpcPort, { keysFile: f, mix: "reserve" });
        const wall = (performance.now() - before!.t) / 1000;
        const after = await redisCpu();
        const perNode = after.map((c, i) => c - before!.nodes[i]!);
        const server = cpuSeconds(cs.pid) - before!.server;
        const redisTotal = perNode.reduce((a, b) => a + b, 0);
        const row = {
          shards, opsPerSecond: r.opsPerSecond, latencyMs: r.latencyMs, errors: r.errors,
          serverCpuUsPerOp: round3((server / Math.max(1, r.ops)) * 1e6), serverPercentOfCore: Math.round((server / wall) * 100),
          redisCpuUsPerOp: round3((redisTotal / Math.max(1, r.ops)) * 1e6), redisPercentOfCore: Math.round((redisTotal / wall) * 100),
          perShardPercentOfCore: perNode.map((c) => Math.round((c / wall) * 100)),
        };
        rows.push(row);
        log(`cluster ${shards} master(s)`.padEnd(28) + ` ${String(row.opsPerSecond).padStart(7)} ops/s  p50 ${r.latencyMs.p50} p99 ${r.latencyMs.p99} ms  errors ${r.errors}  cpu: server ${row.serverPercentOfCore}% ${Math.round(row.serverCpuUsPerOp)}µs/op, redis ${row.redisPercentOfCore}% (per master ${row.perShardPercentOfCore.join("/")}%) ${Math.round(row.redisCpuUsPerOp)}µs/op`);
      } finally {
        await cs?.stop();
        for (const n of nodes) n.disconnect();
        await cluster.stop();
      }
    }
    results.cluster = rows;
  }
} finally {
  const code = server ? await server.stop() : null;
  results.serverExit = code;
  await floor?.stop();
  await redis.stop();
  await db.drop().catch(() => {});
}

const report = {
  name: runName,
  date: new Date().toISOString(),
  command: `npm run bench -- ${process.argv.slice(2).join(" ")}`.trim(),
  machine: { cores: cpus().length, model: cpus()[0]?.model, loadAverageAtEnd: loadAverage(), node: process.version, redis: spawnSync("redis-server", ["--version"]).stdout.toString().trim() },
  settings: { seconds, rounds, calls, concurrency, connections, accounts, curveAccounts, curveLimits, openRates, openAccounts, workers, embedded, batchSize, batchConcurrency, leaseCalls, leasePrefetch, leaseHolder, leaseDecisions, flushIntervalMs: o["flush-interval-ms"] ? Number(o["flush-interval-ms"]) : 2000 },
  ...results,
};
writeFileSync(`${outDir}${runName}.json`, JSON.stringify(report, null, 2));
const charts = drawCharts(report as never, outDir, runName);
log(`wrote ${o.out}/${runName}.json${charts.length ? ` and ${charts.join(", ")}` : " (no chart)"}`);
if (o.profile) log(`CPU profiles in ${tmp}profile (open in Chrome DevTools, or: node bench/profile-top.ts ${tmp}profile)${only.has("f") ? `; (f)'s caller in ${tmp}profile-lease-caller` : ""}`);
else spawnSync("rm", ["-rf", tmp]);
printSummary(report as never);

// ===============================================================================================================

interface Measured extends LoadResult {
  /** CPU seconds per process during the window, and per operation in µs. */
  cpu: Record<string, { seconds: number; percentOfCore: number; usPerOp: number }>;
  redis: { cpuUsPerOp: number; evalshaCalls: number; evalshaUsPerCall: number; commandsPerOp: number };
  machineBusy: number;
  /** Resident memory (MB) of the measured processes at the end of the window (the highest of the rounds). */
  residentMB?: Record<string, number>;
}

function average(rows: Measured[]): Measured {
  const first = rows[0]!;
  if (rows.length === 1) return first;
  const avg = (f: (r: Measured) => number) => round3(rows.reduce((s, r) => s + f(r), 0) / rows.length);
  const cpu: Measured["cpu"] = {};
  for (const k of Object.keys(first.cpu)) cpu[k] = { seconds: avg((r) => r.cpu[k]!.seconds), percentOfCore: avg((r) => r.cpu[k]!.percentOfCore), usPerOp: avg((r) => r.cpu[k]!.usPerOp) };
  return {
    ...first,
    ops: rows.reduce((s, r) => s + r.ops, 0),
    rpcs: rows.reduce((s, r) => s + r.rpcs, 0),
    errors: rows.reduce((s, r) => s + r.errors, 0),
    opsPerSecond: Math.round(avg((r) => r.opsPerSecond)),
    rpcsPerSecond: Math.round(avg((r) => r.rpcsPerSecond)),
    latencyMs: { p50: avg((r) => r.latencyMs.p50), p90: avg((r) => r.latencyMs.p90), p99: avg((r) => r.latencyMs.p99), p999: avg((r) => r.latencyMs.p999), max: Math.max(...rows.map((r) => r.latencyMs.max)), mean: avg((r) => r.latencyMs.mean) },
    cpu,
    redis: { cpuUsPerOp: avg((r) => r.redis.cpuUsPerOp), evalshaCalls: rows.reduce((s, r) => s + r.redis.evalshaCalls, 0), evalshaUsPerCall: avg((r) => r.redis.evalshaUsPerCall), commandsPerOp: avg((r) => r.redis.commandsPerOp) },
    machineBusy: avg((r) => r.machineBusy),
    residentMB: Object.fromEntries(Object.keys(first.residentMB ?? {}).map((k) => [k, Math.max(...rows.map((r) => r.residentMB?.[k] ?? 0))])),
  };
}

/** Runs `fn` (which must resolve once its load window ends) and samples CPU of the named processes and Redis. */
async function measure(names: string[], fn: (hooks?: unknown) => Promise<LoadResult & { windowStart?: () => void }>): Promise<Measured> {
  // The window opens when the load process says "go" (see load()), through this hook.
  let before: { t: number; cpu: Record<string, number>; redis: Awaited<ReturnType<typeof redisCounters>>; machine: ReturnType<typeof machineCpu> } | undefined;
  pendingWindowStart = async () => {
    const cpu: Record<string, number> = {};
    for (const n of [...names, "redis"]) cpu[n] = cpuSeconds(procs[n]!) + childCpu(n);
    before = { t: performance.now(), cpu, redis: await redisCounters(redis.client), machine: machineCpu() };
  };
  const r = await fn();
  const after = { t: performance.now(), redis: await redisCounters(redis.client), machine: machineCpu() };
  if (!before) throw new Error("load window never opened");
  const wall = (after.t - before.t) / 1000;
  const cpu: Measured["cpu"] = {};
  for (const n of [...names, "redis"]) {
    const s = cpuSeconds(procs[n]!) + childCpu(n) - before.cpu[n]!;
    cpu[n] = { seconds: round3(s), percentOfCore: Math.round((s / wall) * 100), usPerOp: round3((s / Math.max(1, r.ops)) * 1e6) };
  }
  if (r.cpuSeconds !== undefined) cpu.loadgen = { seconds: round3(r.cpuSeconds), percentOfCore: Math.round((r.cpuSeconds / r.seconds) * 100), usPerOp: round3((r.cpuSeconds / Math.max(1, r.ops)) * 1e6) };
  const ev0 = before.redis.commands.evalsha ?? { calls: 0, usec: 0 };
  const ev1 = after.redis.commands.evalsha ?? { calls: 0, usec: 0 };
  const allCalls = (c: typeof after.redis.commands) => Object.entries(c).filter(([k]) => k !== "info").reduce((s, [, v]) => s + v.calls, 0);
  const evCalls = ev1.calls - ev0.calls;
  return {
    ...r,
    cpu,
    redis: {
      cpuUsPerOp: round3(((after.redis.cpu - before.redis.cpu) / Math.max(1, r.ops)) * 1e6),
      evalshaCalls: evCalls,
      evalshaUsPerCall: evCalls ? round3((ev1.usec - ev0.usec) / evCalls) : 0,
      commandsPerOp: round3((allCalls(after.redis.commands) - allCalls(before.redis.commands)) / Math.max(1, r.ops)),
    },
    machineBusy: Math.round(((after.machine.busy - before.machine.busy) / Math.max(1, after.machine.total - before.machine.total)) * 100),
    residentMB: Object.fromEntries(names.filter((n) => procs[n] !== undefined).map((n) => [n, rssOf(procs[n]!)])),
  };
}
/** Resident memory of a process in MB (/proc/<pid>/status VmRSS), with its node:cluster workers. */
function rssOf(pid: number): number {
  const one = (p: number) => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${p}/status`, "utf8"))?.[1] ?? 0);
  let kb = one(pid);
  try {
    for (const c of readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean)) kb += one(Number(c));
  } catch {
    // no children
  }
  return Math.round(kb / 1024);
}

/** CPU of processes that are children of the measured one (node:cluster workers). */
function childCpu(name: string): number {
  if (name !== "server" || workers === 1) return 0;
  let sum = 0;
  try {
    const children = readFileSync(`/proc/${procs.server}/task/${procs.server}/children`, "utf8").trim().split(/\s+/).filter(Boolean);
    for (const c of children) sum += cpuSeconds(Number(c));
  } catch {
    // no children (yet)
  }
  return sum;
}

/** Runs bench/load.ts against `port`; opens the measure() window when it is connected. */
async function load(port: number, s: Partial<LoadSpec> & { keysFile: string; mix: LoadSpec["mix"] }): Promise<LoadResult> {
  const spec: LoadSpec = { port, loop: "closed", concurrency, rate: 1000, calls, seconds, connections, token: SERVICE_TOKEN, product: "api", method: "eth_call", ...s };
  const f = `${tmp}spec-${port}-${Date.now()}.json`;
  writeFileSync(f, JSON.stringify(spec));
  return runChild([nodeBin, "bench/load.ts", f, "--handshake"], spec.seconds + 30);
}

async function rateLimiterFlexible(): Promise<Measured> {
  // The limiter runs inside the load process: its CPU is the "loadgen" figure (self-reported, see load window).
  return measure([], () => runChild([nodeBin, "bench/rlf.ts", JSON.stringify({ redisUrl: redis.url, keys: accounts, concurrency, calls, seconds }), "--handshake"], seconds + 30));
}

/** Spawns a child that prints "ready", waits for a line on stdin, then prints one JSON result line. */
function runChild(argv: string[], timeoutSeconds: number): Promise<LoadResult> {
  return new Promise((resolve, reject) => {
    const child = track(spawn(argv[0]!, argv.slice(1), { cwd: ROOT, stdio: ["pipe", "pipe", "pipe"] }));
    let out = "";
    let err = "";
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutSeconds * 1000);
    child.stderr!.on("data", (d: Buffer) => (err = (err + d.toString()).slice(-4000)));
    child.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      if (out.startsWith("ready\n") && !child.stdin!.writableEnded) {
        out = out.slice(6);
        const open = pendingWindowStart ?? (async () => {});
        pendingWindowStart = undefined;
        void open().then(() => child.stdin!.end("go\n"));
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      const line = out.trim().split("\n").pop() ?? "";
      try {
        resolve(JSON.parse(line) as LoadResult);
      } catch {
        reject(new Error(`${argv[1]} exited ${code}: ${err || out}`));
      }
    });
  });
}

async function startFloor(redisUrl: string): Promise<{ pid: number; port: number; stop(): Promise<void> }> {
  return startHelper("floor server", "bench/floor-server.ts", [redisUrl]);
}

/** (z): bench/echo-server.ts, a node:http2 server answering every call with a canned frame. */
async function startEcho(): Promise<{ pid: number; port: number; stop(): Promise<void> }> {
  return startHelper("echo server", "bench/echo-server.ts", []);
}

async function startHelper(what: string, script: string, args: string[]): Promise<{ pid: number; port: number; stop(): Promise<void> }> {
  const port = await freePort();
  const child = track(spawn(nodeBin, [script, String(port), ...args], { cwd: ROOT, stdio: ["ignore", "pipe", "inherit"] }));
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on("data", (d: Buffer) => d.toString().includes("ready") && resolve());
    child.once("exit", (c) => reject(new Error(`${what} exited ${c}`)));
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  return {
    pid: child.pid!,
    port,
    stop: async () => {
      child.kill("SIGTERM");
      await exited;
    },
  };
}

/** Watches Redis with MONITOR while our server answers a few calls; returns one reserve EVALSHA's arguments. */
async function captureReserve(redisUrl: string, port: number, keysFile: string): Promise<string[] | undefined> {
  const base = new Redis(redisUrl, { lazyConnect: true });
  const m = await base.monitor();
  let found: string[] | undefined;
  m.on("monitor", (_t: string, args: string[]) => {
    if (!found && args[0]?.toLowerCase() === "evalsha" && args[1] === RESERVE_SHA) found = args;
  });
  await load(port, { keysFile, mix: "reserve", calls: 20, concurrency: 1, seconds: 5 });
  await new Promise((r) => setTimeout(r, 200));
  m.disconnect();
  base.disconnect();
  if (!found) return undefined;
  // Every call needs its own reservation id: redis-benchmark replaces __rand_int__ in arguments. reserve.lua's ARGV:
  // clock, grace, D, D descriptions, N, then per call its reservation id first (one call: the server's calls of one
  // account made in the same tick share a script call, and this capture runs one call at a time).
  const out = found.slice();
  const argv = 3 + Number(out[2]);
  const d = Number(out[argv + 2]);
  out[argv + 4 + d] = "rsv_bench___rand_int__";
  return out;
}

/** (a): redis-benchmark with the captured EVALSHA; CPU of redis-benchmark itself from its parent shell's cutime. */
async function redisBenchmark(args: string[]): Promise<Measured> {
  // redis-benchmark has no time limit: the count is sized for ~`seconds` on an idle 2-core machine, and the run is
  // killed (and reported as 0 ops) past a generous timeout.
  const n = Math.min(calls, Math.round(seconds * 5_000));
  return measure([], async () => {
    await pendingWindowStart?.();
    pendingWindowStart = undefined;
    const t0 = performance.now();
    const r = spawnSync("sh", ["-c", 'redis-benchmark "$@"; cat /proc/$$/stat >&2', "sh", "-h", "127.0.0.1", "-p", String(redis.port), "-c", String(concurrency), "-n", String(n), "-r", "1000000000", "-P", "8", "--csv", ...args], {
      encoding: "utf8",
      timeout: (seconds * 20 + 30) * 1000,
    });
    const elapsed = (performance.now() - t0) / 1000;
    const line = r.stdout.trim().split("\n").pop() ?? "";
    // The test name (our JSON payload) contains commas: the 7 numbers are the last columns.
    const cols = [Number.NaN, ...line.split(",").slice(-7).map((c) => Number(c.replace(/"/g, "")))];
    const stat = r.stderr.trim().split("\n").pop() ?? "";
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const cpuS = (Number(f[13]) + Number(f[14])) / 100;
    // --csv: "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    return {
      ops: n, rpcs: n, errors: 0, allowed: n, denied: 0, shed: 0, seconds: round3(elapsed),
      opsPerSecond: Math.round(cols[1] ?? 0), rpcsPerSecond: Math.round(cols[1] ?? 0),
      latencyMs: { p50: cols[4] ?? 0, p90: cols[5] ?? 0, p99: cols[6] ?? 0, p999: Number.NaN, max: cols[7] ?? 0, mean: cols[2] ?? 0 },
      cpuSeconds: cpuS,
    } as LoadResult;
  });
}

/** h2load: one HTTP/2 connection, `concurrency` streams, one request body (one key) for every stream. */
async function h2load(port: number, apiKey: string): Promise<LoadResult> {
  if (!ensureTool("h2load", "nghttp2-client")) throw new Error("h2load is not available");
  const body = `${tmp}h2load-body.bin`;
  writeFileSync(body, checkAndReserveFrame(apiKey, "api", "eth_call"));
  await pendingWindowStart?.();
  pendingWindowStart = undefined;
  const r = spawnSync(
    "sh",
    ["-c", 'h2load "$@"; cat /proc/$$/stat >&2', "sh", "-D", String(seconds), "-c", "1", "-m", String(concurrency), "-d", body, "-H", "content-type: application/grpc", "-H", "te: trailers", "-H", `authorization: Bearer ${SERVICE_TOKEN}`, `http://127.0.0.1:${port}/quota.v1.QuotaService/CheckAndReserve`],
    { encoding: "utf8", timeout: (seconds + 60) * 1000 },
  );
  const text = r.stdout;
  const rps = Number(/finished in ([\d.]+)s, ([\d.]+) req\/s/.exec(text)?.[2] ?? 0);
  const took = Number(/finished in ([\d.]+)s/.exec(text)?.[1] ?? 0);
  const ok = Number(/(\d+) succeeded/.exec(text)?.[1] ?? 0);
  const n = Number(/requests: (\d+) total/.exec(text)?.[1] ?? ok);
  // "time for request:  min  max  mean  sd  +/- sd" (units vary: us / ms / s)
  const req = /time for request:\s+(\S+)\s+(\S+)\s+(\S+)/.exec(text);
  const ms = (v?: string) => (!v ? 0 : v.endsWith("us") ? Number(v.slice(0, -2)) / 1000 : v.endsWith("ms") ? Number(v.slice(0, -2)) : Number(v.slice(0, -1)) * 1000);
  const stat = r.stderr.trim().split("\n").pop() ?? "";
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return {
    ops: ok, rpcs: ok, errors: n - ok, allowed: ok, denied: 0, shed: 0, seconds: took, opsPerSecond: Math.round(rps), rpcsPerSecond: Math.round(rps),
    latencyMs: { p50: Number.NaN, p90: Number.NaN, p99: Number.NaN, p999: Number.NaN, max: ms(req?.[2]), mean: ms(req?.[3]) },
    cpuSeconds: (Number(f[13]) + Number(f[14])) / 100,
  };
}

/** (e)/(f): asks the server for the RPC; a reason string when it answers UNIMPLEMENTED (12), else undefined. */
async function probe(port: number, method: string): Promise<string | undefined> {
  const status = await new Promise<string>((resolve) => {
    const s = http2.connect(`http://127.0.0.1:${port}`);
    s.on("error", (e) => resolve(`error ${e.message}`));
    const req = s.request({ ":method": "POST", ":path": `/quota.v1.QuotaService/${method}`, "content-type": "application/grpc", te: "trailers", authorization: `Bearer ${SERVICE_TOKEN}` });
    let st = "";
    req.on("response", (h) => (st = String(h["grpc-status"] ?? st)));
    req.on("trailers", (t) => (st = String(t["grpc-status"] ?? st)));
    req.on("data", () => {});
    req.on("close", () => {
      s.close();
      resolve(st);
    });
    req.end(Buffer.from([0, 0, 0, 0, 0]));
  });
  if (status === "12") return `not available: the server answers UNIMPLEMENTED for quota.v1.QuotaService/${method}`;
  return undefined;
}

/** (f): bench/lease.ts in its own process (its CPU is the "loadgen" figure: the caller's cost of its decisions). */
async function leasePath(port: number, leaseKeys: string[]): Promise<Measured> {
  const keysFile = `${tmp}keys-lq1.txt`;
  writeFileSync(keysFile, leaseKeys.join("\n"));
  const spec = { port, token: SERVICE_TOKEN, keysFile, product: "api", method: "eth_call", limitName: "monthly", concurrency, calls: leaseDecisions, seconds, leaseCalls, ttlMs: 30_000, prefetchAt: leasePrefetch, holder: leaseHolder };
  const f = `${tmp}spec-lease-${Date.now()}.json`;
  writeFileSync(f, JSON.stringify(spec));
  // --profile: the caller's CPU profile too (what a decision costs in the calling process).
  const prof = o.profile ? ["--cpu-prof", `--cpu-prof-dir=${tmp}profile-lease-caller`] : [];
  const m = await measure(["server"], () => runChild([nodeBin, ...prof, "bench/lease.ts", f, "--handshake"], seconds + 60));
  const check = (m as Measured & { lease?: { exact: boolean; keysOverLimit: number; admittedUnits: string; counterMovedUnits: string } }).lease;
  if (check) log(`f lease check: admitted ${check.admittedUnits} units, counter moved ${check.counterMovedUnits}, exact ${check.exact}, keys over limit ${check.keysOverLimit}`);
  return m;
}

function fmtRow(label: string, m: Measured): string {
  const cpu = Object.entries(m.cpu).map(([k, v]) => `${k} ${v.percentOfCore}% ${Math.round(v.usPerOp)}µs/op`).join(", ");
  const rss = Object.entries(m.residentMB ?? {}).map(([k, v]) => `${k} ${v} MB`).join(", ");
  return `${label.padEnd(28)} ${String(m.opsPerSecond).padStart(7)} ops/s  p50 ${m.latencyMs.p50} p99 ${m.latencyMs.p99} p99.9 ${m.latencyMs.p999} ms  errors ${m.errors}  cpu: ${cpu}  redis ${m.redis.cpuUsPerOp}µs/op (evalsha ${m.redis.evalshaUsPerCall}µs)  machine ${m.machineBusy}%${rss ? `  rss: ${rss}` : ""}`;
}

function printSummary(r: { sideBySide?: { summary: Record<string, Measured & { what: string }>; ratios: Record<string, unknown>; unavailable: Record<string, string> } }): void {
  if (!r.sideBySide) return;
  console.log("\n| | ops/s | p50 ms | p99 ms | p99.9 ms | process CPU (µs/op) | Redis CPU µs/op | EVALSHA µs |");
  console.log("|---|---|---|---|---|---|---|---|");
  for (const [id, m] of Object.entries(r.sideBySide.summary)) {
    const cpu = Object.entries(m.cpu).filter(([k]) => k !== "redis").map(([k, v]) => `${k} ${v.percentOfCore}% (${Math.round(v.usPerOp)})`).join(", ");
    console.log(`| (${id}) ${m.what} | ${m.opsPerSecond} | ${m.latencyMs.p50} | ${m.latencyMs.p99} | ${m.latencyMs.p999} | ${cpu} | ${m.redis.cpuUsPerOp} | ${m.redis.evalshaUsPerCall} |`);
  }
  for (const [id, why] of Object.entries(r.sideBySide.unavailable)) console.log(`| (${id}) | ${why} | | | | | | |`);
  console.log(`\nratios: ${Object.entries(r.sideBySide.ratios).map(([k, v]) => `${k} = ${v}`).join(", ")}`);
}
