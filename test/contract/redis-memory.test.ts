/**
 * Redis memory of one account stays bounded whatever its call volume (issue 7 item 8): 100,000 CheckAndReserve +
 * Release pairs on one account, driven against the store directly with a moving test clock, and the account's keys
 * (MEMORY USAGE, every element sampled) must stay under the bound docs/capacity.md states: what is retained is
 * the calls of the last (TTL + grace), each settled result in its compact form.
 */
import { afterAll, expect, it } from "vitest";
import type { CounterLimit } from "../../src/core/counter-store.ts";
import { RedisCounterStore } from "../../src/store/redis/redis-counter-store.ts";
import { ManualClock, T0 } from "../support/env.ts";
import { testRedis } from "../support/redis.ts";

const PAIRS = 100_000;
const BATCH = 500;
const STEP_MS = 5; // one pair every 5 ms of store time: 200 calls/s for 500 s
const TTL_MS = 30_000;
const GRACE_MS = 60_000;
/** The bound docs/capacity.md states: bytes per call retained (its settled result and its idempotency id, each an
 * rs field and an rx member, with production-length ids), plus the account's fixed part (capacity, usage, logs). */
const BYTES_PER_RETAINED_CALL = 640;
const FIXED_BYTES = 64 * 1024;

const env = await testRedis();
afterAll(env.cleanup);

async function accountBytes(account: string): Promise<{ bytes: number; keys: number }> {
  const keys = await env.redis.keys(`${env.prefix}{a:${account}}:*`);
  let bytes = 0;
  for (const k of keys) bytes += Number(await env.redis.call("MEMORY", "USAGE", k, "SAMPLES", "0"));
  return { bytes, keys: keys.length };
}

it("keeps one account's Redis memory bounded over 100,000 reserve + release pairs", async () => {
  const clock = new ManualClock(T0);
  const store = new RedisCounterStore(env.redis, { keyPrefix: env.prefix, clock: clock.now, retentionGraceMs: GRACE_MS });
  const account = "mem1";
  await store.restore(account, [{ limitId: "s:sub:monthly", base: 1_000_000_000n, basePriority: 100, grants: [] }], {}, 1);
  const limits: CounterLimit[] = [
    { id: "s:sub:monthly", kind: "QUOTA", meter: "units", amount: 1n, period: { type: "fixed", bounds: [T0 - 60 * 86_400_000, T0 - 1, T0 + 30 * 86_400_000, T0 + 60 * 86_400_000] } },
    { id: "k:key:inflight", kind: "CONCURRENCY", meter: "calls", amount: 1n, limit: 1_000_000n },
  ];
  let peak = 0;
  for (let i = 0; i < PAIRS; i += BATCH) {
    // Production-length ids: r~<account>~<key id, 16>~<22 random>; idempotency ids are "<key id>:<request id>".
    const ids = Array.from({ length: BATCH }, (_, j) => `r~${account}~abcdefghijklmnop~${String(i + j).padStart(22, "x")}`);
    const reserved = await Promise.all(ids.map((id) =>
      store.reserve({ accountId: account, reservationId: id, mode: "ENFORCE", ttlMs: TTL_MS, product: "api", expiryPolicy: "charge", gates: [], limits, idempotencyId: `abcdefghijklmnop:${id.slice(-22).padStart(36, "0")}` })));
    expect(reserved.every((r) => r.outcome === "ALLOWED")).toBe(true);
    const released = await Promise.all(ids.map((id) => store.release({ accountId: account, reservationId: id, outcome: "COMMIT", actual: {} })));
    expect(released.every((r) => r.outcome === "SETTLED")).toBe(true);
    clock.advance(BATCH * STEP_MS);
    if (i % 25_000 === 0 && i > 0) peak = Math.max(peak, (await accountBytes(account)).bytes);
  }
  const end = await accountBytes(account);
  peak = Math.max(peak, end.bytes);
  // Retained: results and idempotency ids of the calls of the last (TTL + grace), plus at most a sweep batch.
  const retained = Math.ceil((TTL_MS + GRACE_MS) / STEP_MS) + 2 * BATCH;
  const bound = FIXED_BYTES + retained * BYTES_PER_RETAINED_CALL;
  console.log(JSON.stringify({ pairs: PAIRS, retainedCalls: retained, bytes: end.bytes, peak, bound, bytesPerRetainedCall: Math.round(end.bytes / retained) }));
  expect(peak).toBeLessThan(bound);
  // and the settled reservations really are forgotten (not only compact): the hash holds the recent ones only
  expect(await env.redis.hlen(`${env.prefix}{a:${account}}:rs`)).toBeLessThanOrEqual(2 * retained);
}, 300_000);
