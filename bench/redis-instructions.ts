/**
 * Redis CPU per script call as INSTRUCTIONS, not seconds: a private redis-server runs under valgrind's callgrind,
 * which counts the instructions it executes (repeatable to ~0.3 % for the same binary and inputs, whatever else
 * the machine does; wall-clock `usec_per_call` on this shared VM varies by 10-20 % between identical runs).
 * The command is bench/redis-scripts.ts's: 3 limits (monthly quota, per-key rate, per-key concurrency), N reserves
 * spread over --accounts accounts (64: one call per script, the single-call case; 1: the store groups 64 calls
 * of one account into each script), then N releases of them; then, for scale, N EVALSHA of a script that returns
 * at once with the same number of keys and arguments, and of lib.lua alone.
 *
 *   sh scripts/node bench/redis-instructions.ts [--calls 2000] [--accounts 64] [--limits q,r,c]
 *   REDIS_SERVER=/path/to/redis-server sh scripts/node bench/redis-instructions.ts    (a build with symbols; then
 *     `callgrind_annotate --inclusive=yes <dump>` names the functions: see docs/performance.md)
 *
 * Prints JSON: instructions per reserve and per release (and per decision), and where the dumps are. Bounded: at
 * most 20,000 calls (valgrind runs Redis ~50x slower); loopback only; the server is stopped at the end.
 */
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { connect } from "node:net";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Redis } from "ioredis";
import type { CounterLimit } from "../src/core/counter-store.ts";
import { RedisCounterStore } from "../src/store/redis/redis-counter-store.ts";
import { ROOT, freePort } from "./lib/env.ts";

const { values: o } = parseArgs({ options: { calls: { type: "string", default: "2000" }, accounts: { type: "string", default: "64" }, limits: { type: "string", default: "q,r,c" } } });
const N = Math.min(20_000, Math.max(64, Number(o.calls)));
const ACCOUNTS = Math.min(64, Math.max(1, Number(o.accounts)));
const WINDOW = 64;
const dir = mkdtempSync(join(tmpdir(), "qa-callgrind-"));
const port = await freePort();
const server = spawn("valgrind", ["--tool=callgrind", `--callgrind-out-file=${dir}/callgrind.out.%p`, process.env.REDIS_SERVER ?? "redis-server", "--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: "ignore" });
const cg = (action: "-z" | "-d") => execFileSync("callgrind_control", [action, String(server.pid)], { stdio: "ignore" });
// valgrind takes a few seconds to start redis-server: wait for its port, then connect.
for (let i = 0; ; i++) {
  const up = await new Promise<boolean>((resolve) => {
    const s = connect(port, "127.0.0.1", () => (s.end(), resolve(true)));
    s.on("error", () => resolve(false));
  });
  if (up) break;
  if (i > 300) throw new Error("redis-server under valgrind did not start in 60 s");
  await new Promise((r) => setTimeout(r, 200));
}
const redis = new Redis(port, "127.0.0.1");
try {
  const store = new RedisCounterStore(redis, { keyPrefix: "bench:" });
  const DAY = 86_400_000;
  const now = Date.now();
  const all: CounterLimit[] = [
    { id: "s:sub1:monthly", kind: "QUOTA", meter: "units", amount: 1n, period: { type: "fixed", bounds: [now - 60 * DAY, now - DAY, now + 29 * DAY, now + 59 * DAY] } },
    { id: "k:key1:rps", kind: "RATE", meter: "calls", amount: 1n, limit: 1_000_000_000n, windowMs: 1000 },
    { id: "k:key1:inflight", kind: "CONCURRENCY", meter: "calls", amount: 1n, limit: 1_000_000_000n },
  ];
  const pick = o.limits.split(",");
  const limits = all.filter((_, i) => pick.includes("qrc"[i]!));
  const accountOf = (j: number) => `acct${j % ACCOUNTS}`;
  for (let a = 0; a < ACCOUNTS; a++) await store.restore(accountOf(a), [{ limitId: "s:sub1:monthly", base: 1_000_000_000n, basePriority: 100, grants: [] }], {}, 1);
  const reserve = (j: number, id: string) =>
    store.reserve({ accountId: accountOf(j), reservationId: id, mode: "ENFORCE", ttlMs: 600_000, product: "api", expiryPolicy: "charge", gates: [], limits });
  for (let i = 0; i < 200; i++) {
    const r = await reserve(i, `warm${i}`);
    await store.release({ accountId: accountOf(i), reservationId: r.reservationId!, outcome: "COMMIT", actual: {} });
  }
  const ids: string[] = [];
  await redis.config("RESETSTAT");
  cg("-z");
  for (let i = 0; i < N; i += WINDOW) {
    const batch = [];
    for (let j = i; j < Math.min(N, i + WINDOW); j++) {
      const id = `r~${accountOf(j)}~bench~${j}`;
      ids.push(id);
      batch.push(reserve(j, id));
    }
    for (const r of await Promise.all(batch)) if (r.outcome !== "ALLOWED") throw new Error(`reserve ${r.outcome}`);
  }
  cg("-d");
  const scripts = Number(/cmdstat_evalsha:calls=(\d+)/.exec(await redis.info("commandstats"))![1]);
  for (let i = 0; i < N; i += WINDOW) {
    const batch = ids.slice(i, i + WINDOW).map((id, k) => store.release({ accountId: accountOf(i + k), reservationId: id, outcome: "COMMIT", actual: { units: 1n } }));
    for (const r of await Promise.all(batch)) if (r.outcome !== "SETTLED") throw new Error(`release ${r.outcome}`);
  }
  cg("-d");
  // For scale: a script that returns at once, with the keys and argument count of a single-call reserve; and the
  // same with lib.lua in front (what defining its functions costs on every call).
  const keys = Array.from({ length: 5 + limits.length }, (_, i) => `{a:x}:k${i}`);
  const args = Array.from({ length: 4 + limits.length + 8 }, (_, i) => `argument-${i}-xxxxxxxxxxxxxxxxxxxxxx`);
  const lib = readFileSync(`${ROOT}src/store/redis/scripts/lib.lua`, "utf8");
  for (const body of ["return 1", `${lib}\nreturn 1`]) {
    const sha = (await redis.script("LOAD", body)) as string;
    cg("-z");
    for (let i = 0; i < N; i += WINDOW) await Promise.all(Array.from({ length: Math.min(WINDOW, N - i) }, () => redis.evalsha(sha, keys.length, ...keys, ...args)));
    cg("-d");
  }
  const dumps = readdirSync(dir).filter((f) => /\.\d+\.\d+$/.test(f)).sort((a, b) => Number(a.split(".").pop()) - Number(b.split(".").pop()));
  const count = (f: string) => Number(/^summary:\s*(\d+)/m.exec(readFileSync(join(dir, f), "utf8"))![1]);
  const [res, rel, empty, withLib] = dumps.map(count) as [number, number, number, number];
  console.log(JSON.stringify({
    calls: N,
    accounts: ACCOUNTS,
    limits: limits.map((l) => l.kind),
    reserveInstructionsPerDecision: Math.round(res / N),
    releaseInstructionsPerDecision: Math.round(rel / N),
    reserveScripts: scripts,
    reserveInstructionsPerScript: Math.round(res / scripts),
    emptyScriptInstructions: Math.round(empty / N),
    libOnlyScriptInstructions: Math.round(withLib / N),
    redisServer: process.env.REDIS_SERVER ?? "redis-server",
    dumps: dir,
  }));
} finally {
  redis.disconnect();
  server.kill("SIGTERM");
  await new Promise((r) => server.once("exit", r));
}
