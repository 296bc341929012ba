/**
 * Issue 7 item 17: how long one usage-flusher pass takes at N active accounts (default 10,000), against a real
 * Postgres (fresh database) and a private redis-server.
 *
 *   npm run bench:flusher -- [--accounts 10000] [--passes 2] [--quick]
 *
 * Setup: the real server (`src/cli/main.ts serve`) makes every account active (one CheckAndReserve each, through the
 * load generator: key load + first-touch restore + a reservation), then stops (its shutdown flush writes the first
 * snapshots). Then, in this process, a UsageFlusher over the same Postgres and Redis is told every account was
 * touched and `flush()` is timed: per account it sweeps, loads the account's configuration, posts credit spend (none
 * on plan l3: no budget) and upserts the usage snapshot. Reported: pass duration, accounts/s, this process's CPU and
 * Redis's CPU during the pass. The server's own flush interval (QUOTA_FLUSH_INTERVAL_MS, default 2 s) is shorter
 * than a pass at this size, so a server with this many active accounts flushes without pause.
 */
import { spawn } from "node:child_process";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { Redis } from "ioredis";
import { UsageFlusher } from "../src/core/usage-flusher.ts";
import { systemClock } from "../src/core/ports.ts";
import { MikroDatabase } from "../src/store/db/mikro-database.ts";
import { openOrm } from "../src/store/db/orm.ts";
import { RedisCounterStore } from "../src/store/redis/redis-counter-store.ts";
import { ROOT, SERVICE_TOKEN, createDatabase, redisCounters, seedAccounts, startRedis, startServer, track } from "./lib/env.ts";
import { loadAverage, round3 } from "./lib/stats.ts";
import type { LoadResult } from "./load.ts";

const { values: o } = parseArgs({
  options: {
    accounts: { type: "string" },
    passes: { type: "string" },
    quick: { type: "boolean", default: false },
    out: { type: "string", default: "bench/results" },
    name: { type: "string" },
  },
});
const accounts = Math.min(Number(o.accounts ?? (o.quick ? 2000 : 10_000)), 100_000);
const passes = Math.min(Number(o.passes ?? (o.quick ? 1 : 2)), 5);
const outDir = `${ROOT}${o.out.replace(/\/$/, "")}/`;
mkdirSync(outDir, { recursive: true });
const name = o.name ?? `flusher-${new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-")}`;
const log = (...a: unknown[]) => console.error(...a);
for (const sig of ["SIGINT", "SIGTERM"] as const) process.once(sig, () => process.exit(130));

log(`flusher bench: ${accounts} accounts, ${passes} pass(es), load average ${loadAverage().join(" ")}`);
const redis = await startRedis();
const db = await createDatabase();
const report: Record<string, unknown> = { name, date: new Date().toISOString(), command: `npm run bench:flusher -- ${process.argv.slice(2).join(" ")}`.trim(), accounts };
try {
  const server = await startServer({ databaseUrl: db.url, redisUrl: redis.url });
  const keys = await seedAccounts(db.url, "l3", accounts, "fl");
  const keysFile = `${outDir}.flusher-keys-${process.pid}.txt`;
  writeFileSync(keysFile, keys.join("\n"));
  const specFile = `${outDir}.flusher-spec-${process.pid}.json`;
  writeFileSync(specFile, JSON.stringify({ port: server.grpcPort, keysFile, mix: "reserve", loop: "closed", concurrency: 128, rate: 0, calls: accounts, seconds: 300, connections: 1, token: SERVICE_TOKEN, product: "api", method: "eth_call" }));
  const touch = await runLoad(specFile);
  log(`touched ${touch.ops} accounts at ${touch.opsPerSecond}/s (errors ${touch.errors}${touch.firstError ? `: ${touch.firstError}` : ""})`);
  const t = performance.now();
  const code = await server.stop();
  log(`server stopped (exit ${code}) in ${((performance.now() - t) / 1000).toFixed(1)} s, including its final flush of every account`);
  report.touch = { ops: touch.ops, perSecond: touch.opsPerSecond, errors: touch.errors, serverStopSeconds: round3((performance.now() - t) / 1000) };

  const orm = await openOrm({ url: db.url });
  const database = new MikroDatabase(orm as never);
  const client = new Redis(redis.url, { enableAutoPipelining: true, maxRetriesPerRequest: 1 });
  const store = new RedisCounterStore(client, { keyPrefix: "qa:" });
  const flusher = new UsageFlusher({ db: database, store, clock: systemClock });
  const ids = Array.from({ length: accounts }, (_, i) => `fl-${i}`);
  const rows = [];
  for (let p = 1; p <= passes; p++) {
    for (const id of ids) flusher.touched(id);
    const r0 = await redisCounters(redis.client);
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    await flusher.flush();
    const s = (performance.now() - t0) / 1000;
    const c = process.cpuUsage(c0);
    const r1 = await redisCounters(redis.client);
    const row = {
      pass: p,
      seconds: round3(s),
      accountsPerSecond: Math.round(accounts / s),
      msPerAccount: round3((s * 1000) / accounts),
      leftDirty: flusher.pending,
      flusherCpuPercent: Math.round(((c.user + c.system) / 1e6 / s) * 100),
      flusherCpuUsPerAccount: Math.round((c.user + c.system) / accounts),
      redisCpuUsPerAccount: Math.round(((r1.cpu - r0.cpu) / accounts) * 1e6),
    };
    rows.push(row);
    log(`pass ${p}: ${row.seconds} s for ${accounts} accounts (${row.msPerAccount} ms each, ${row.accountsPerSecond}/s), flusher CPU ${row.flusherCpuPercent}% of a core, ${row.leftDirty} left dirty`);
  }
  report.passes = rows;
  client.disconnect();
  await orm.close();
} finally {
  await redis.stop();
  await db.drop().catch(() => {});
  for (const f of [`${outDir}.flusher-keys-${process.pid}.txt`, `${outDir}.flusher-spec-${process.pid}.json`]) rmSync(f, { force: true });
}
report.loadAverageAtEnd = loadAverage();
writeFileSync(`${outDir}${name}.json`, JSON.stringify(report, null, 2));
log(`wrote ${o.out}/${name}.json`);
process.exit(0);

function runLoad(spec: string): Promise<LoadResult> {
  return new Promise((resolve, reject) => {
    const child = track(spawn(process.execPath, ["bench/load.ts", spec], { cwd: ROOT, stdio: ["ignore", "pipe", "inherit"] }));
    let out = "";
    child.stdout!.on("data", (d: Buffer) => (out += d.toString()));
    child.once("exit", (code) => {
      try {
        resolve(JSON.parse(out.trim().split("\n").pop()!) as LoadResult);
      } catch {
        reject(new Error(`load generator exited ${code}: ${out}`));
      }
    });
  });
}
