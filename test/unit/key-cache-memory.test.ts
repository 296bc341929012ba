/**
 * What a cached, verified key keeps alive. A secret that matched is remembered with the key's cache entry; it must
 * be a buffer of its own: a small `Buffer.from(...)` is a slice of Node's shared 8 KB allocation pool, and keeping
 * the slice keeps the whole slab, together with whatever else the process allocated from it. In the server (where
 * gRPC frames, Redis replies and headers share the pool between two verifications) that pinned ~3 KB per cached key
 * (heap snapshots of bench/hot-path.ts at 100 and 10,000 accounts, docs/performance.md).
 */
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { describe, expect, it } from "vitest";
import { KeyCache, type KeyContext } from "../../src/core/key-cache.ts";
import { hashSecret } from "../../src/core/ids.ts";
import type { Database, PlanRecord, SubscriptionRecord } from "../../src/core/ports.ts";

setFlagsFromString("--expose-gc");
const gc = runInNewContext("gc") as () => void;

const KEYS = 2_000;
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
  it("a verified secret is kept in a buffer of its own, not as a slice pinning a shared 8 KB pool slab", async () => {
    const cache = new KeyCache(db, { now: () => 0 } as never, { maxEntries: KEYS * 2 });
    const ctxs: KeyContext[] = [];
    for (let i = 0; i < KEYS; i++) {
      const ctx = await cache.get(`k${i}`);
      ctxs.push(ctx!);
    }
    gc();
    const before = process.memoryUsage().arrayBuffers;
    let filler = 0;
    for (let i = 0; i < KEYS; i++) {
      expect(cache.verify(`k${i}`, ctxs[i]!, secretOf(i))).toBe(true);
      // Other traffic allocating from the pool between two verifications, as in the server.
      filler += Buffer.from("x".repeat(3000)).length;
    }
    expect(filler).toBe(KEYS * 3000);
    gc();
    const retained = process.memoryUsage().arrayBuffers - before;
    // Own buffers: ~43 bytes of data per key (86 KB for 2,000). Pinned slabs: several MB.
    expect(retained).toBeLessThan(1_000_000);
    // Still remembered: a second verification hashes nothing.
    const hashes = cache.secretHashes;
    for (let i = 0; i < KEYS; i++) expect(cache.verify(`k${i}`, ctxs[i]!, secretOf(i))).toBe(true);
    expect(cache.secretHashes).toBe(hashes);
  });
});
