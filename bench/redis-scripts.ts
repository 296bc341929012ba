/**
 * Redis CPU per script call, from `INFO commandstats` on a private redis-server (never the shared one):
 * N CheckAndReserve calls of a 3-limit command (monthly quota, per-key rate, per-key concurrency), then N Releases
 * of those reservations. Bounded: N defaults to 20,000 and at most 200,000; one connection, auto-pipelined.
 * The store sends the calls of one account made in the same tick as one script call (ADR 33): with --accounts 1
 * (default) 64 calls in flight are one script; with --accounts 64 every script carries one call (the single-call
 * case). Reported per decision (usec / N) and per script call.
 *
 *   sh scripts/node bench/redis-scripts.ts [--calls 20000] [--accounts 1|64]
 */
import { Redis } from "ioredis";
import type { CounterLimit } from "../src/core/counter-store.ts";
import { RedisCounterStore } from "../src/store/redis/redis-counter-store.ts";
import { PrivateRedis } from "../test/support/redis-server.ts";

const arg = (name: string, dflt: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
};
const N = Math.min(200_000, Math.max(100, arg("calls", 20_000)));
const WINDOW = 64;
const ACCOUNTS = Math.min(WINDOW, Math.max(1, arg("accounts", 1)));
const DAY = 86_400_000;

const server = await PrivateRedis.start();
const redis = new Redis(server.port, "127.0.0.1", { enableAutoPipelining: true });
try {
  const store = new RedisCounterStore(redis, { keyPrefix: "bench:" });
  const accountOf = (j: number) => `acct${j % ACCOUNTS}`;
  const now = Date.now();
  for (let a = 0; a < ACCOUNTS; a++) await store.restore(accountOf(a), [{ limitId: "s:sub1:monthly", base: 1_000_000_000n, basePriority: 100, grants: [] }], {}, 1);
  const limits: CounterLimit[] = [
    { id: "s:sub1:monthly", kind: "QUOTA", meter: "units", amount: 1n, period: { type: "fixed", bounds: [now - 60 * DAY, now - DAY, now + 29 * DAY, now + 59 * DAY] } },
    { id: "k:key1:rps", kind: "RATE", meter: "calls", amount: 1n, limit: 1_000_000_000n, windowMs: 1000 },
    { id: "k:key1:inflight", kind: "CONCURRENCY", meter: "calls", amount: 1n, limit: 1_000_000_000n },
  ];
  const ids: string[] = [];
  // usec_per_call (commandstats) is wall time inside the command, so it grows when the machine is overloaded and
  // Redis is descheduled mid-script; INFO cpu (user + sys seconds of the process) is the CPU it really used, which
  // also counts the per-command network and parsing work. Both are reported.
  const cpu = async (): Promise<number> => {
    const info = await redis.info("cpu");
    return Number(/used_cpu_user:([\d.]+)/.exec(info)![1]) + Number(/used_cpu_sys:([\d.]+)/.exec(info)![1]);
  };
  let cpuAt = 0;
  const stats = async (): Promise<{ calls: number; usec: number; cpuUsec: number }> => {
    const info = await redis.info("commandstats");
    const m = /cmdstat_evalsha:calls=(\d+),usec=(\d+)/.exec(info);
    const cpuUsec = ((await cpu()) - cpuAt) * 1e6;
    return m ? { calls: Number(m[1]), usec: Number(m[2]), cpuUsec } : { calls: 0, usec: 0, cpuUsec };
  };
  // Warm up (script load, hash encodings), then measure.
  for (let i = 0; i < 200; i++) {
    const r = await store.reserve({ accountId: accountOf(i), reservationId: `warm${i}`, mode: "ENFORCE", ttlMs: 30_000, product: "api", expiryPolicy: "charge", gates: [], limits });
    await store.release({ accountId: accountOf(i), reservationId: r.reservationId!, outcome: "COMMIT", actual: {} });
  }
  await redis.config("RESETSTAT");
  cpuAt = await cpu();
  const t0 = Date.now();
  for (let i = 0; i < N; i += WINDOW) {
    const batch = [];
    for (let j = i; j < Math.min(N, i + WINDOW); j++) {
      const id = `r~${accountOf(j)}~bench~${j}`;
      ids.push(id);
      batch.push(store.reserve({ accountId: accountOf(j), reservationId: id, mode: "ENFORCE", ttlMs: 600_000, product: "api", expiryPolicy: "charge", gates: [], limits }));
    }
    for (const r of await Promise.all(batch)) if (r.outcome !== "ALLOWED") throw new Error(`reserve ${r.outcome} ${r.reason}`);
  }
  const reserve = await stats();
  // Memory of the account's keys with N reservations open, then with N settled results retained.
  const accountBytes = async () => {
    const keys = await redis.keys(`bench:{a:acct*}:*`);
    let bytes = 0;
    for (const k of keys) bytes += Number(await redis.call("MEMORY", "USAGE", k, "SAMPLES", "0"));
    return bytes;
  };
  const openBytes = await accountBytes();
  await redis.config("RESETSTAT");
  cpuAt = await cpu();
  for (let i = 0; i < N; i += WINDOW) {
    const batch = ids.slice(i, i + WINDOW).map((id, k) => store.release({ accountId: accountOf(i + k), reservationId: id, outcome: "COMMIT", actual: { units: 1n } }));
    for (const r of await Promise.all(batch)) if (r.outcome !== "SETTLED") throw new Error(`release ${r.outcome}`);
  }
  const release = await stats();
  const settledBytes = await accountBytes();
  // The floor on this machine at this moment: an EVALSHA of a script that only reads TIME, same pipelining.
  await redis.config("RESETSTAT");
  cpuAt = await cpu();
  const sha = (await redis.script("LOAD", "return redis.call('TIME')[1]")) as string;
  for (let i = 0; i < N; i += WINDOW) {
    const batch = [];
    for (let j = i; j < Math.min(N, i + WINDOW); j++) batch.push(redis.evalsha(sha, 0));
    await Promise.all(batch);
  }
  const floor = await stats();
  const out = {
    calls: N,
    limitsPerCall: limits.length,
    accounts: ACCOUNTS,
    reserveScriptCalls: reserve.calls,
    releaseScriptCalls: release.calls,
    reserveUsecPerDecision: +(reserve.usec / N).toFixed(1),
    releaseUsecPerDecision: +(release.usec / N).toFixed(1),
    reserveCpuUsecPerDecision: +(reserve.cpuUsec / N).toFixed(1),
    releaseCpuUsecPerDecision: +(release.cpuUsec / N).toFixed(1),
    reserveUsecPerCall: +(reserve.usec / reserve.calls).toFixed(1),
    releaseUsecPerCall: +(release.usec / release.calls).toFixed(1),
    reserveCpuUsecPerCall: +(reserve.cpuUsec / reserve.calls).toFixed(1),
    releaseCpuUsecPerCall: +(release.cpuUsec / release.calls).toFixed(1),
    floorUsecPerCall: +(floor.usec / floor.calls).toFixed(1),
    floorCpuUsecPerCall: +(floor.cpuUsec / floor.calls).toFixed(1),
    bytesPerOpenReservation: Math.round(openBytes / N),
    bytesPerSettledResult: Math.round(settledBytes / N),
    loadAverage: (await import("node:os")).loadavg()[0]!.toFixed(1),
    wallSeconds: +((Date.now() - t0) / 1000).toFixed(1),
    redis: (await redis.info("server")).match(/redis_version:(\S+)/)?.[1],
  };
  console.log(JSON.stringify(out));
} finally {
  redis.disconnect();
  await server.stop();
}
