/**
 * Issue 7 item 17: how long one usage-flusher pass takes at N active accounts (default 10,000), against a real
 * Postgres (a fresh database) and a private redis-server (free port).
 *
 *   npm run bench:flusher -- [--accounts 10000] [--passes 2] [--name NAME]
 *
 * Setup, in this process and without the server (which warms only a few accounts per second on a loaded machine):
 * migrations and the bench plans are applied, accounts/subscriptions/keys are bulk-inserted in SQL (plan l3: monthly
 * quota, per-key rate, per-key concurrency; no budget), and each account is made active through the
 * RedisCounterStore exactly as a first call does it: `restore` (capacity from its configuration, empty snapshot),
 * then one ENFORCE `reserve` with the limits `limitsForCall` builds for a call, then a COMMIT `release` — 64 accounts
 * in flight, ioredis auto-pipelining (as the server's client). Then a UsageFlusher (default options: 64 in flight,
 * 500 accounts per config load, 1,000 rows per upsert) is told every account was touched and `flush()` is timed:
 * pass 1 with a cold configuration cache, pass 2 (and later) warm. Reported per pass: duration, ms per account, calls
 * to the Database port by method, SQL statements sent (every pg `Client.query` in this process during the pass, i.e.
 * Postgres round trips), Redis commands by name and Redis CPU (INFO), this process's CPU, and the load average.
 *
 * Bounds: at most 100,000 accounts and 5 passes; setup gives up after --setup-seconds (default 600), a pass after
 * --pass-seconds (default 600).
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { monitorEventLoopDelay } from "node:perf_hooks";
import pg from "pg";
import { Redis } from "ioredis";
import { AdminService } from "../src/core/admin-service.ts";
import { CapacitySync } from "../src/core/capacity.ts";
import { capacityOf, gatesFor, limitsForCall } from "../src/core/limits.ts";
import { systemClock, type Database as DatabasePort } from "../src/core/ports.ts";
import type { QuotaService } from "../src/core/quota-service.ts";
import { UsageFlusher } from "../src/core/usage-flusher.ts";
import { MikroDatabase } from "../src/store/db/mikro-database.ts";
import { migrate, openOrm } from "../src/store/db/orm.ts";
import { InMemoryCounterStore } from "../src/store/memory/in-memory-counter-store.ts";
import { LocalChangeBus } from "../src/store/memory/local-change-bus.ts";
import { RedisCounterStore } from "../src/store/redis/redis-counter-store.ts";
import { PLANS, ROOT, createDatabase, redisCounters, seedAccounts, startRedis } from "./lib/env.ts";
import { loadAverage, round3 } from "./lib/stats.ts";

const { values: o } = parseArgs({
  options: {
    accounts: { type: "string", default: "10000" },
    passes: { type: "string", default: "2" },
    "setup-seconds": { type: "string", default: "600" },
    "pass-seconds": { type: "string", default: "600" },
    out: { type: "string", default: "bench/results" },
    name: { type: "string" },
  },
});
const accounts = Math.max(1, Math.min(Number(o.accounts), 100_000));
const passes = Math.max(1, Math.min(Number(o.passes), 5));
const setupMs = Math.min(Number(o["setup-seconds"]), 3600) * 1000;
const passMs = Math.min(Number(o["pass-seconds"]), 3600) * 1000;
const outDir = `${ROOT}${o.out.replace(/\/$/, "")}/`;
mkdirSync(outDir, { recursive: true });
const name = o.name ?? `flusher-${accounts}`;
const log = (...a: unknown[]) => console.error(...a);
for (const sig of ["SIGINT", "SIGTERM"] as const) process.once(sig, () => process.exit(130));

// Every SQL statement this process sends goes through pg's Client.query (MikroORM 7 -> Kysely -> pg): one round trip each.
let sqlStatements = 0;
const query = pg.Client.prototype.query as (...a: unknown[]) => unknown;
pg.Client.prototype.query = function (this: pg.Client, ...a: unknown[]) {
  sqlStatements++;
  return query.apply(this, a);
} as typeof pg.Client.prototype.query;

/** The Database port with a call count per method. */
function counted(db: DatabasePort): { db: DatabasePort; calls: Map<string, number> } {
  const calls = new Map<string, number>();
  const proxy = new Proxy(db, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver) as unknown;
      if (typeof v !== "function") return v;
      return (...args: unknown[]) => {
        calls.set(String(prop), (calls.get(String(prop)) ?? 0) + 1);
        return (v as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
  return { db: proxy, calls };
}

function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout;
  return Promise.race([p, new Promise<never>((_, reject) => (t = setTimeout(() => reject(new Error(`${what} took more than ${ms / 1000} s`)), ms)))]).finally(() => clearTimeout(t));
}

const loadAtStart = loadAverage();
log(`flusher bench: ${accounts} accounts, ${passes} pass(es), load average ${loadAtStart.join(" ")}`);
const redis = await startRedis();
const pgdb = await createDatabase();
const report: Record<string, unknown> = {
  name,
  date: new Date().toISOString(),
  command: `npm run bench:flusher -- ${process.argv.slice(2).join(" ")}`.trim(),
  accounts,
  plan: "l3 (monthly quota, per-key rate, per-key concurrency; no budget)",
  flusherOptions: "defaults: concurrency 64, loadBatch 500, 1,000 rows per upsert",
  loadAverageAtStart: loadAtStart,
};
let exitCode = 0;
try {
  const orm = await openOrm({ url: pgdb.url });
  await migrate(orm);
  const database = new MikroDatabase(orm as never);
  const bus = new LocalChangeBus();
  const capacity = new CapacitySync({ db: database, store: new InMemoryCounterStore(), clock: systemClock, bus });
  await new AdminService({ db: database, clock: systemClock, bus, capacity, syncCapacity: false, quota: undefined as unknown as QuotaService }).applyPlans(PLANS, "bench plans");

  const setupDeadline = Date.now() + setupMs;
  let t = performance.now();
  await within(seedAccounts(pgdb.url, "l3", accounts, "fl"), setupMs, "seeding");
  const seedSeconds = (performance.now() - t) / 1000;
  log(`seeded ${accounts} accounts in Postgres in ${seedSeconds.toFixed(1)} s`);

  const client = new Redis(redis.url, { enableAutoPipelining: true, maxRetriesPerRequest: 1 });
  const store = new RedisCounterStore(client, { keyPrefix: "qa:" });
  const ids = Array.from({ length: accounts }, (_, i) => `fl-${i}`);
  t = performance.now();
  let activated = 0;
  for (let from = 0; from < ids.length; from += 500) {
    if (Date.now() > setupDeadline) throw new Error(`setup: only ${activated} of ${accounts} accounts active after ${setupMs / 1000} s`);
    const chunk = ids.slice(from, from + 500);
    const now = Date.now();
    const configs = await database.loadAccountConfigs(chunk, new Date(now));
    let next = 0;
    const worker = async () => {
      while (next < chunk.length) {
        const id = chunk[next++]!;
        const config = configs.get(id);
        if (!config) throw new Error(`setup: account ${id} not found after seeding`);
        const sub = config.subscriptions[0]!;
        const plan = config.plans.get(sub.planId)!.spec;
        const key = config.keys[0]!;
        await store.restore(id, capacityOf(config), {}, config.account.capacityVersion);
        const applied = limitsForCall(plan, sub, key, "api", { units: 10n, spend: 0n, meters: {} }, now);
        const r = await store.reserve({ accountId: id, reservationId: `bench-${id}`, mode: "ENFORCE", ttlMs: 30_000, product: "api", expiryPolicy: "charge", gates: gatesFor(sub, key), limits: applied.map((a) => a.counter) });
        if (r.outcome !== "ALLOWED") throw new Error(`setup: reserve of ${id} was ${r.outcome} ${r.reason ?? ""}`);
        const rel = await store.release({ accountId: id, reservationId: `bench-${id}`, outcome: "COMMIT", actual: {} });
        if (rel.outcome !== "SETTLED") throw new Error(`setup: release of ${id} was ${rel.outcome}`);
        activated++;
      }
    };
    await Promise.all(Array.from({ length: 64 }, worker));
  }
  const activateSeconds = (performance.now() - t) / 1000;
  log(`made ${activated} accounts active in Redis (restore + reserve + release each) in ${activateSeconds.toFixed(1)} s`);
  report.setup = { seedSeconds: round3(seedSeconds), activateSeconds: round3(activateSeconds), activated, redisKeys: await redis.client.dbsize() };

  const { db, calls } = counted(database);
  const flusher = new UsageFlusher({ db, store, clock: systemClock });
  const rows = [];
  for (let p = 1; p <= passes; p++) {
    for (const id of ids) flusher.touched(id);
    calls.clear();
    const sql0 = sqlStatements;
    const r0 = await redisCounters(redis.client);
    // How long the pass holds this process's event loop at a stretch: every call arriving meanwhile waits that long.
    const loop = monitorEventLoopDelay({ resolution: 1 });
    loop.enable();
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    const stats = await within(flusher.flush(), passMs, `pass ${p}`);
    const s = (performance.now() - t0) / 1000;
    const c = process.cpuUsage(c0);
    loop.disable();
    const sql = sqlStatements - sql0;
    const r1 = await redisCounters(redis.client);
    const redisCommands: Record<string, number> = {};
    for (const [cmd, v] of Object.entries(r1.commands)) {
      const d = v.calls - (r0.commands[cmd]?.calls ?? 0) - (cmd === "info" ? 1 : 0);
      if (d > 0) redisCommands[cmd] = d;
    }
    const row = {
      pass: p,
      configCache: p === 1 ? "cold" : "warm",
      seconds: round3(s),
      msPerAccount: round3((s * 1000) / accounts),
      accountsPerSecond: Math.round(accounts / s),
      flushed: stats.accounts,
      failed: stats.failed,
      leftDirty: flusher.pending,
      databaseCalls: Object.fromEntries(calls),
      sqlStatements: sql,
      redisCommands,
      flusherCpuSeconds: round3((c.user + c.system) / 1e6),
      flusherCpuPercentOfCore: Math.round(((c.user + c.system) / 1e6 / s) * 100),
      flusherCpuUsPerAccount: Math.round((c.user + c.system) / accounts),
      redisCpuUsPerAccount: Math.round(((r1.cpu - r0.cpu) / accounts) * 1e6),
      /** Longest and 99th-percentile event-loop delay during the pass (ms; 1 ms resolution). */
      loopDelayMaxMs: round3(loop.max / 1e6),
      loopDelayP99Ms: round3(loop.percentile(99) / 1e6),
      loadAverage: loadAverage(),
    };
    if (stats.failed > 0) exitCode = 1;
    rows.push(row);
    log(`pass ${p} (${row.configCache} cache): ${row.seconds} s for ${accounts} accounts (${row.msPerAccount} ms each), ${sql} SQL statements ${JSON.stringify(row.databaseCalls)}, Redis ${JSON.stringify(redisCommands)}, flusher CPU ${row.flusherCpuPercentOfCore}% of a core, event loop held up to ${row.loopDelayMaxMs} ms (p99 ${row.loopDelayP99Ms}), ${stats.failed} failed, load ${row.loadAverage.join(" ")}`);
  }
  report.passes = rows;
  // What the passes wrote: one snapshot row per durable limit (the monthly quota) of every account, holding the usage.
  const sample = await database.loadUsageSnapshot(ids[ids.length - 1]!);
  const check = new pg.Client({ connectionString: pgdb.url });
  await check.connect();
  const { rows: [count] } = await check.query<{ n: string; accounts: string }>("select count(*) n, count(distinct account_id) accounts from usage_snapshots");
  await check.end();
  report.snapshots = { rows: Number(count!.n), accounts: Number(count!.accounts), sample: { accountId: ids[ids.length - 1], states: sample } };
  log(`usage_snapshots: ${count!.n} rows for ${count!.accounts} accounts; sample ${JSON.stringify(sample)}`);
  if (Number(count!.accounts) !== accounts) exitCode = 1;
  client.disconnect();
  await orm.close();
} catch (e) {
  report.error = String(e);
  log(`failed: ${String(e)}`);
  exitCode = 1;
} finally {
  await redis.stop();
  await pgdb.drop().catch(() => {});
}
report.loadAverageAtEnd = loadAverage();
writeFileSync(`${outDir}${name}.json`, JSON.stringify(report, null, 2) + "\n");
log(`wrote ${o.out}/${name}.json`);
process.exit(exitCode);
