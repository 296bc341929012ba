/**
 * What a cached, verified key keeps alive. A secret that matched is remembered with the key's cache entry; it must
 * be a buffer of its own: a small `Buffer.from(...)` is a slice of Node's shared 8 KB allocation pool, and keeping
 * the slice keeps the whole slab, together with whatever else the process allocated from it. In the server (where
 * gRPC frames, Redis replies and headers share the pool between two verifications) that pinned ~3 KB per cached key
 * (heap snapshots of bench/hot-path.ts at 100 and 10,000 accounts, docs/performance.md).
 */
import { describe, expect, it } from "vitest";
import { KeyCache, type KeyContext } from "../../src/core/key-cache.ts";
import { hashSecret } from "../../src/core/ids.ts";
import type { Database, PlanRecord, SubscriptionRecord } from "../../src/core/ports.ts";
import { gc, settled } from "../support/memory.ts";

const KEYS = 2_000;

/** Off-heap bytes in ArrayBuffers once collected garbage is gone (test/support/memory.ts). */
const settledArrayBuffers = () => settled((m) => m.arrayBuffers);
const secretOf = (i: number) => `s${String(i).padStart(42, "0")}`; // 43 characters, as a real secret

function contextOf(i: number): KeyContext {
  const at = new Date(0);
  return {
    key: { id: `k${i}`, accountId: `a${i}`, subscriptionId: `sub${i}`, name: "k", secretHash: hashSecret(secretOf(i)), status: "active", owner: true, overage: false, subLimits: {}, expiresAt: null, createdAt: at },
    subscription: { id: `sub${i}` } as unknown as SubscriptionRecord,
    plan: { id: "p" } as unknown as PlanRecord,
  };
}

const db = {
  loadKeyContexts: async (ids: readonly string[]) => new Map(ids.map((id) => [id, contextOf(Number(id.slice(1)))])),
} as unknown as Database;

describe("key cache memory", () => {
  it("a verified secret is kept on its own (a string), not as a slice pinning a shared 8 KB pool slab", async () => {
    const cache = new KeyCache(db, { now: () => 0 } as never, { maxEntries: KEYS * 2 });
    const ctxs: KeyContext[] = [];
    for (let i = 0; i < KEYS; i++) {
      const ctx = await cache.get(`k${i}`);
      ctxs.push(ctx!);
    }
    const before = await settledArrayBuffers();
    let filler = 0;
    for (let i = 0; i < KEYS; i++) {
      expect(cache.verify(`k${i}`, ctxs[i]!, secretOf(i))).toBe(true);
      // Other traffic allocating from the pool between two verifications, as in the server.
      filler += Buffer.from("x".repeat(3000)).length;
    }
    expect(filler).toBe(KEYS * 3000);
    const retained = (await settledArrayBuffers()) - before;
    // Own buffers: ~43 bytes of data per key (86 KB for 2,000). Pinned slabs: several MB.
    expect(retained).toBeLessThan(1_000_000);
    // Still remembered: a second verification hashes nothing.
    const hashes = cache.secretHashes;
    for (let i = 0; i < KEYS; i++) expect(cache.verify(`k${i}`, ctxs[i]!, secretOf(i))).toBe(true);
    expect(cache.secretHashes).toBe(hashes);
  });

  it("forgets an account once none of its keys is cached: an LRU many accounts pass through stays bounded", async () => {
    const cache = new KeyCache(db, { now: () => 0 } as never, { maxEntries: 100 });
    for (let i = 0; i < 1_000; i++) await cache.get(`k${i}`); // warm-up: code optimized, the maps at their size
    gc();
    const before = process.memoryUsage().heapUsed;
    const ACCOUNTS = 50_000;
    // In batches, as concurrent first touches arrive (one Postgres load per batch).
    for (let i = 1_000; i < 1_000 + ACCOUNTS; i += 100) await Promise.all(Array.from({ length: 100 }, (_, j) => cache.get(`k${i + j}`)));
    gc();
    const grown = process.memoryUsage().heapUsed - before;
    expect(cache.size).toBe(100);
    // Bounded: a hundred entries whatever passed through. Kept per account ever seen (an empty Set each, measured
    // ~10 MB for 50,000 accounts before the fix): grows with the accounts.
    expect(grown).toBeLessThan(2_000_000);
    // Still tracked while cached: invalidating an account drops its cached key.
    const last = `k${ACCOUNTS + 999}`;
    expect(cache.peek(last)).not.toBeUndefined();
    cache.invalidate(`a${ACCOUNTS + 999}`);
    expect(cache.peek(last)).toBeUndefined();
  });

  it("an account with several cached keys: invalidating it drops every one, also after one of them was evicted", async () => {
    // Keys k<i> of account "shared" for i < 3, of their own account otherwise.
    const shared = {
      loadKeyContexts: async (ids: readonly string[]) =>
        new Map(ids.map((id) => {
          const c = contextOf(Number(id.slice(1)));
          if (Number(id.slice(1)) < 3) c.key.accountId = "shared";
          return [id, c];
        })),
    } as unknown as Database;
    const cache = new KeyCache(shared, { now: () => 0 } as never, { maxEntries: 4 });
    for (const id of ["k0", "k1", "k2", "k10"]) await cache.get(id);
    await cache.get("k11"); // evicts k0, the least recently used
    expect(cache.peek("k0")).toBeUndefined();
    expect([cache.peek("k1"), cache.peek("k2")].every((c) => c?.key.accountId === "shared")).toBe(true);
    await cache.get("k12"); // evicts k1: k2 is the account's last cached key
    cache.invalidate("shared");
    expect(cache.peek("k2")).toBeUndefined();
    expect(cache.peek("k10")).not.toBeUndefined();
    // Loaded again after the invalidation, and dropped again by the next one.
    await cache.get("k2");
    await cache.get("k1");
    cache.invalidate("shared");
    expect([cache.peek("k1"), cache.peek("k2")]).toEqual([undefined, undefined]);
    expect(cache.size).toBe(2); // k11, k12
  });
});
