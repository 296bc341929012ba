/**
 * What a reservation id answered by the Redis store keeps alive. The id outlives its call: the in-flight gauge
 * (src/observability/metrics.ts) keeps every reserved id until it is released or expires, up to 1,000,000 of them.
 * An id cut out of the script's reply with `split` is, in V8, a slice of that reply: keeping it keeps the whole
 * reply, which for a grouped call is every answer of the group (the statuses of all its calls). Seen in heap
 * snapshots of bench/hot-path.ts (docs/performance.md, "Memory").
 */
import { Redis } from "ioredis";
import { expect, it } from "vitest";
import type { CounterLimit, ReserveCommand } from "../../src/core/counter-store.ts";
import { RedisCounterStore } from "../../src/store/redis/redis-counter-store.ts";
import { gc } from "../support/memory.ts";
import { PrivateRedis } from "../support/redis-server.ts";

it("a reservation id answered by the store does not keep its script reply alive", async () => {
  const server = await PrivateRedis.start();
  const redis = new Redis(server.port, "127.0.0.1", { enableAutoPipelining: true });
  try {
    const store = new RedisCounterStore(redis, { keyPrefix: "ret:" });
    // Three limits, so each answer carries three statuses (a few hundred bytes), as the product's plans do.
    const limits: CounterLimit[] = ["q1", "q2", "q3"].map((n) => ({ id: `s:sub-1:${n}`, kind: "QUOTA", meter: "units", amount: 1n, period: { type: "none" } }));
    await store.restore("acct-1", limits.map((l) => ({ limitId: l.id, base: 10_000_000n, basePriority: 100, grants: [] })), {});
    const call = (i: number): ReserveCommand => ({
      accountId: "acct-1", reservationId: `r~acct-1~${String(i).padStart(16, "a")}~${"x".repeat(22)}`, mode: "ENFORCE",
      ttlMs: 600_000, product: "api", expiryPolicy: "charge", gates: [], limits,
    });
    const kept: string[] = [];
    // Warm-up (the script loaded, the code optimized, ioredis' buffers grown), kept nothing of.
    for (let g = 0; g < 20; g++) await Promise.all(Array.from({ length: 50 }, (_, i) => store.reserve(call(-1 - g * 50 - i))));
    gc();
    const before = process.memoryUsage().heapUsed;
    const GROUPS = 120;
    const PER_GROUP = 50;
    for (let g = 0; g < GROUPS; g++) {
      // One group (one script call, one reply of 50 answers); the caller keeps one id of it, as the gauge would.
      const answers = await Promise.all(Array.from({ length: PER_GROUP }, (_, i) => store.reserve(call(g * PER_GROUP + i))));
      expect(answers.every((a) => a.outcome === "ALLOWED")).toBe(true);
      kept.push(answers[0]!.reservationId!);
    }
    gc();
    const perId = (process.memoryUsage().heapUsed - before) / GROUPS;
    expect(kept[5]).toBe(call(5 * PER_GROUP).reservationId);
    // An id of its own: ~100 bytes (measured ~1.1 KB per group with what else a group leaves, e.g. JIT feedback).
    // A slice of its group's reply: the whole reply (measured 13.5 KB per group before the fix).
    expect(perId).toBeLessThan(3_000);
  } finally {
    redis.disconnect();
    await server.stop();
  }
});
