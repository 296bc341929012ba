import { Redis } from "ioredis";
import { expect, it } from "vitest";
import type { CounterLimit, ReserveCommand } from "../../src/core/counter-store.ts";
import { RedisCounterStore } from "../../src/store/redis/redis-counter-store.ts";
import { DECLARED_KEYS_GUARD } from "../support/redis-guard.ts";
import { PrivateRedis } from "../support/redis-server.ts";
import { testRedis } from "../support/redis.ts";
import { describeCounterStore } from "./counter-store.contract.ts";
import { describeCounterStoreProperties, propertyRuns } from "./counter-store.property.ts";

describeCounterStore("RedisCounterStore", async (clock) => {
  const { redis, prefix, cleanup } = await testRedis();
  // Every script runs under the guard: the whole suite fails if any script touches a key it did not declare.
  const store = new RedisCounterStore(redis, { keyPrefix: prefix, clock, scriptPrelude: DECLARED_KEYS_GUARD });
  return {
    store,
    wipe: async () => {
      const keys = await redis.keys(`${prefix}*`);
      if (keys.length > 0) await redis.del(...keys);
    },
    cleanup,
  };
});

describeCounterStoreProperties(
  "RedisCounterStore",
  async (clock) => {
    const { redis, prefix, cleanup } = await testRedis();
    return { store: new RedisCounterStore(redis, { keyPrefix: prefix, clock, scriptPrelude: DECLARED_KEYS_GUARD }), cleanup };
  },
  propertyRuns(200),
);

it("the declared-keys guard refuses a script that touches a key it did not declare", async () => {
  const { redis, prefix, cleanup } = await testRedis();
  try {
    const lua = `${DECLARED_KEYS_GUARD}\nredis.call('GET', KEYS[1])\nreturn redis.call('GET', '${prefix}undeclared')`;
    await expect(redis.eval(lua, 1, `${prefix}declared`)).rejects.toThrow(/undeclared key/);
    expect(await redis.eval(`${DECLARED_KEYS_GUARD}\nreturn redis.call('SET', KEYS[1], 'x')`, 1, `${prefix}declared`)).toBe("OK");
    // TIME names no key: the scripts call it whenever no clock override is passed (every call in production)
    expect(await redis.eval(`${DECLARED_KEYS_GUARD}\nreturn #redis.call('TIME')`, 1, `${prefix}declared`)).toBe(2);
  } finally {
    await cleanup();
  }
});

it("sends the reserves and releases of one account made in the same tick as one script call (at most 50 per call), one per account", async () => {
  const server = await PrivateRedis.start();
  const redis = new Redis(server.port, "127.0.0.1", { enableAutoPipelining: true });
  try {
    const store = new RedisCounterStore(redis, { keyPrefix: "grp:" });
    const quota = (amount: bigint): CounterLimit => ({ id: "s:1:q", kind: "QUOTA", meter: "units", amount, period: { type: "none" } });
    const call = (accountId: string, i: number): ReserveCommand => ({
      accountId, reservationId: `r_${accountId}_${i}`, mode: "ENFORCE", ttlMs: 30_000, product: "api", expiryPolicy: "charge", gates: [], limits: [quota(1n)],
    });
    for (const a of ["a1", "a2", "a3"]) await store.restore(a, [{ limitId: "s:1:q", base: 1000n, basePriority: 100, grants: [] }], {});
    await store.reserve(call("a1", -1)); // loads the script
    const scriptCalls = async () => {
      const info = await redis.info("commandstats");
      return [...info.matchAll(/cmdstat_eval(?:sha)?:calls=(\d+)/g)].reduce((n, m) => n + Number(m[1]), 0);
    };
    await redis.config("RESETSTAT");
    const one = await Promise.all(Array.from({ length: 120 }, (_, i) => store.reserve(call("a1", i))));
    expect(one.every((r) => r.outcome === "ALLOWED")).toBe(true);
    expect(one.map((r) => r.states[0]!.used)).toEqual(Array.from({ length: 120 }, (_, i) => BigInt(i + 2)));
    expect(await scriptCalls()).toBe(3); // 50 + 50 + 20
    await redis.config("RESETSTAT");
    const three = await Promise.all(["a1", "a2", "a3", "a2", "a3", "a1"].map((a, i) => store.reserve(call(a, 1000 + i))));
    expect(three.map((r) => r.states[0]!.used)).toEqual([122n, 1n, 1n, 2n, 2n, 123n]);
    expect(await scriptCalls()).toBe(3);
    // Releases too: 120 of one account (one of them twice: the repeat replays the first) in 3 script calls.
    await redis.config("RESETSTAT");
    const ids = one.map((r) => r.reservationId!);
    const released = await Promise.all([...ids, ids[0]!].map((id) => store.release({ accountId: "a1", reservationId: id, outcome: "CANCEL", actual: {} })));
    expect(released.slice(0, 120).every((r) => r.outcome === "SETTLED" && r.state === "CANCELLED")).toBe(true);
    expect(released[120]).toMatchObject({ outcome: "REPLAYED", state: "CANCELLED" });
    expect(await scriptCalls()).toBe(3); // 50 + 50 + 21
    const peek = await store.reserve({ ...call("a1", 2000), mode: "CHECK_ONLY", limits: [quota(0n)] });
    expect(peek.states[0]!.used).toBe(3n); // the warm-up call and the 2 of the second group
  } finally {
    redis.disconnect();
    await server.stop();
  }
});

it("describes a limit the calls of a group share once, and a limit of the same id with other values apart (a plan changed between two calls of one tick)", async () => {
  const server = await PrivateRedis.start();
  const redis = new Redis(server.port, "127.0.0.1");
  try {
    const store = new RedisCounterStore(redis, { keyPrefix: "desc:", clock: () => 1_800_000_000_000, scriptPrelude: DECLARED_KEYS_GUARD });
    const rate = (limit: bigint): CounterLimit => ({ id: "k:1:rps", kind: "RATE", meter: "calls", amount: 1n, limit, windowMs: 1000 });
    const two = rate(2n);
    const call = (i: number, l: CounterLimit): ReserveCommand => ({
      accountId: "a", reservationId: `r_${i}`, mode: "ENFORCE", ttlMs: 30_000, product: "api", expiryPolicy: "charge", gates: [], limits: [l],
    });
    await store.restore("a", [], {});
    await store.reserve(call(0, rate(100n))); // loads the script
    // One tick: the same limit object twice, one of the same id allowing 5, and a copy of the first (equal values).
    const r = await Promise.all([call(1, two), call(2, two), call(3, rate(5n)), call(4, { ...two }), call(5, two)].map((c) => store.reserve(c)));
    expect(r.map((x) => [x.outcome, x.states[0]!.limit])).toEqual([["ALLOWED", 2n], ["DENIED", 2n], ["ALLOWED", 5n], ["DENIED", 2n], ["DENIED", 2n]]);
    expect(r.map((x) => x.states[0]!.used)).toEqual([2n, 2n, 3n, 3n, 3n]);
  } finally {
    redis.disconnect();
    await server.stop();
  }
});

it("writes all of a tick's script calls on a single Redis in one socket write (corked), not one write per account", async () => {
  const server = await PrivateRedis.start();
  const redis = new Redis(server.port, "127.0.0.1", { enableAutoPipelining: false });
  try {
    const store = new RedisCounterStore(redis, { keyPrefix: "cork:" });
    const accounts = Array.from({ length: 10 }, (_, i) => `c${i}`);
    const quota: CounterLimit = { id: "s:1:q", kind: "QUOTA", meter: "units", amount: 1n, period: { type: "none" } };
    const call = (accountId: string, i: number): ReserveCommand => ({
      accountId, reservationId: `r_${accountId}_${i}`, mode: "ENFORCE", ttlMs: 30_000, product: "api", expiryPolicy: "charge", gates: [], limits: [quota],
    });
    for (const a of accounts) await store.restore(a, [{ limitId: "s:1:q", base: 1000n, basePriority: 100, grants: [] }], {});
    await store.reserve(call("c0", -1)); // loads the script
    // Count what reaches the socket's underlying writes (net.Socket: _writev for a corked batch, _write otherwise).
    const socket = (redis as unknown as { stream: { _write: (...a: unknown[]) => void; _writev: (...a: unknown[]) => void } }).stream;
    let writes = 0;
    const w = socket._write.bind(socket);
    const wv = socket._writev.bind(socket);
    socket._write = (...a) => (writes++, w(...a));
    socket._writev = (...a) => (writes++, wv(...a));
    const r = await Promise.all(accounts.map((a, i) => store.reserve(call(a, i))));
    expect(r.every((x) => x.outcome === "ALLOWED")).toBe(true);
    expect(writes).toBe(1); // was 10: one per account's script call
    // The usage flusher's per-account calls made in one tick, too.
    writes = 0;
    const exported = await Promise.all(accounts.map((a) => store.sweepAndExport(a, ["s:1:q"])));
    expect(exported.every((x) => x.states["s:1:q"] !== undefined)).toBe(true);
    expect(writes).toBe(1); // was 10
  } finally {
    redis.disconnect();
    await server.stop();
  }
});


it("exports the accounts of a tick together on a single Redis (32 per script call), and stops a call once it settled its bound, sending the rest again", async () => {
  const server = await PrivateRedis.start();
  const redis = new Redis(server.port, "127.0.0.1");
  try {
    let now = 1_800_000_000_000;
    const store = new RedisCounterStore(redis, { keyPrefix: "exp:", clock: () => now, scriptPrelude: DECLARED_KEYS_GUARD });
    const quota: CounterLimit = { id: "s:1:q", kind: "QUOTA", meter: "units", amount: 1n, period: { type: "none" } };
    const call = (accountId: string, i: number): ReserveCommand => ({
      accountId, reservationId: `r_${accountId}_${i}`, mode: "ENFORCE", ttlMs: 1_000, product: "api", expiryPolicy: "refund", gates: [], limits: [quota],
    });
    const accounts = Array.from({ length: 40 }, (_, i) => `e${i}`);
    for (const a of accounts) await store.restore(a, [{ limitId: "s:1:q", base: 100_000n, basePriority: 100, grants: [] }], {});
    // 40 accounts, one call each; 3 of them with 601 reservations each, all left to expire (refund).
    await Promise.all(accounts.map((a) => store.reserve(call(a, 0))));
    for (const a of ["e0", "e1", "e2"]) for (let i = 1; i < 600; i += 50) await Promise.all(Array.from({ length: 50 }, (_, k) => store.reserve(call(a, i + k))));
    await store.exportState("e0", ["s:1:q"]); // loads the script
    const scriptCalls = async () => [...(await redis.info("commandstats")).matchAll(/cmdstat_eval(?:sha)?:calls=(\d+)/g)].reduce((n, m) => n + Number(m[1]), 0);
    // Nothing due yet: 40 accounts in 2 script calls (32 + 8), each answered as if alone.
    await redis.config("RESETSTAT");
    const fresh = await Promise.all(accounts.map((a) => store.sweepAndExport(a, ["s:1:q"])));
    expect(await scriptCalls()).toBe(2);
    expect(fresh.map((x) => x.states["s:1:q"]?.b)).toEqual(accounts.map((a) => (["e0", "e1", "e2"].includes(a) ? "601" : "1")));
    expect(fresh.every((x) => x.settled === 0)).toBe(true);
    // All expired: e0 and e1 settle 601 each (1,202 >= the bound of 1,000), so that call stops there; the other 38
    // go again: 3 calls in all (e0..e1; e2..e33; e34..e39), every account settled and answered once.
    now += 5_000;
    await redis.config("RESETSTAT");
    const due = await Promise.all(accounts.map((a) => store.sweepAndExport(a, ["s:1:q"])));
    expect(await scriptCalls()).toBe(3);
    expect(due.map((x) => x.settled)).toEqual(accounts.map((a) => (["e0", "e1", "e2"].includes(a) ? 601 : 1)));
    expect(due.every((x) => x.states["s:1:q"]?.b === "0")).toBe(true); // refunded
  } finally {
    redis.disconnect();
    await server.stop();
  }
});

it("a group decides a reservation of TTL 0 as separate calls would: its slot has already expired for the next call", async () => {
  const { redis, prefix, cleanup } = await testRedis();
  try {
    const store = new RedisCounterStore(redis, { keyPrefix: prefix, clock: () => 1_800_000_000_000, scriptPrelude: DECLARED_KEYS_GUARD });
    const slot: CounterLimit = { id: "s:1:c", kind: "CONCURRENCY", meter: "calls", amount: 1n, limit: 1n };
    await store.restore("t0", [], {});
    const call = (id: string): ReserveCommand => ({ accountId: "t0", reservationId: id, mode: "ENFORCE", ttlMs: 0, product: "api", expiryPolicy: "refund", gates: [], limits: [slot] });
    const one = [await store.reserve(call("a1")), await store.reserve(call("a2"))].map((r) => r.outcome);
    const grouped = (await Promise.all([store.reserve(call("b1")), store.reserve(call("b2"))])).map((r) => r.outcome);
    expect(one).toEqual(["ALLOWED", "ALLOWED"]);
    expect(grouped).toEqual(one);
  } finally {
    await cleanup();
  }
});

it("a group that sees one RATE limit with two windows (a plan changed mid-tick) decides as separate calls would", async () => {
  const { redis, prefix, cleanup } = await testRedis();
  try {
    let now = 1_800_000_000_000;
    const store = new RedisCounterStore(redis, { keyPrefix: prefix, clock: () => now, scriptPrelude: DECLARED_KEYS_GUARD });
    const rate = (windowMs: number): CounterLimit => ({ id: "k:r", kind: "RATE", meter: "calls", amount: 1n, limit: 1n, windowMs });
    const call = (accountId: string, id: string, windowMs: number): ReserveCommand => ({
      accountId, reservationId: id, mode: "ENFORCE", ttlMs: 60_000, product: "api", expiryPolicy: "refund", gates: [], limits: [rate(windowMs)],
    });
    const outcomes: Record<string, string[]> = {};
    for (const [account, grouped] of [["seq", false], ["grp", true]] as const) {
      now = 1_800_000_000_000;
      await store.restore(account, [], {});
      expect((await store.reserve(call(account, "r0", 10_000))).outcome).toBe("ALLOWED");
      now += 5_000;
      // The 10 s window still holds r0 (DENIED); the 1 s window has dropped it (ALLOWED).
      const calls = [call(account, "r1", 10_000), call(account, "r2", 1_000)];
      const got = grouped ? await Promise.all(calls.map((c) => store.reserve(c))) : [await store.reserve(calls[0]!), await store.reserve(calls[1]!)];
      outcomes[account] = got.map((r) => r.outcome);
    }
    expect(outcomes.seq).toEqual(["DENIED", "ALLOWED"]);
    expect(outcomes.grp).toEqual(outcomes.seq);
  } finally {
    await cleanup();
  }
});

it("exports two accounts with the same limit id in one call, each read afresh (a refund of one is not decided by the other's window)", async () => {
  const server = await PrivateRedis.start();
  const redis = new Redis(server.port, "127.0.0.1");
  try {
    const T = 1_800_000_000_000;
    let now = T;
    const store = new RedisCounterStore(redis, { keyPrefix: "same:", clock: () => now, scriptPrelude: DECLARED_KEYS_GUARD });
    const bounds = [T - 2 * 86_400_000, T - 86_400_000, T + 1_000, T + 60 * 86_400_000] as const;
    const quota = (amount: bigint): CounterLimit => ({ id: "s:1:q", kind: "QUOTA", meter: "units", amount, period: { type: "fixed", bounds } });
    const call = (accountId: string, id: string, amount: bigint, ttlMs: number): ReserveCommand => ({
      accountId, reservationId: id, mode: "ENFORCE", ttlMs, product: "api", expiryPolicy: "refund", gates: [], limits: [quota(amount)],
    });
    for (const a of ["a", "b"]) {
      await store.restore(a, [{ limitId: "s:1:q", base: 100n, basePriority: 100, grants: [] }], {});
      await store.reserve(call(a, `${a}1`, 5n, 2_000)); // in the window that ends at T + 1 s; expires at T + 2 s
    }
    now = T + 1_500; // the next window: only b is called in it (its usage there: 3, kept past the expiry)
    await store.reserve(call("b", "b2", 3n, 3_600_000));
    now = T + 3_000;
    const [a, b] = await Promise.all(["a", "b"].map((id) => store.sweepAndExport(id, ["s:1:q"])));
    // a's reservation is refunded in its own window; b's was charged in a window that has since rolled over: history.
    expect([a!.settled, b!.settled]).toEqual([1, 1]);
    expect(a!.states["s:1:q"]).toMatchObject({ win: String(bounds[1]), b: "0" });
    expect(b!.states["s:1:q"]).toMatchObject({ win: String(bounds[2]), b: "3" });
  } finally {
    redis.disconnect();
    await server.stop();
  }
});
