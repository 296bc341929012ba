/**
 * "A top-up committed in Postgres but whose Redis capacity write was lost is repaired within
 * QUOTA_RECONCILE_INTERVAL_MS" (docs/operations.md). The lost write is forced with a counter store wrapper that
 * drops capacity writes on demand (the commit in Postgres happens, the Redis write does not); the repair is observed
 * on the reconciler's own passes (the interval timer's calls), not by polling: the first pass that runs after the
 * fault is gone repairs the account — so the repair comes within one reconcile interval of the store being
 * writable again.
 */
import { AsyncLocalStorage } from "node:async_hooks";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { CapacityEntry, CounterStore } from "../../src/core/counter-store.ts";
import { Decision, Mode } from "../../src/gen/quota/v1/types_pb.ts";
import { startTestApp, type TestApp } from "../support/app.ts";
import { clients, type Clients } from "../support/clients.ts";
import { applyPlans, deposit, seedAccount } from "../support/fixtures.ts";

const PLANS = `
plans:
  - id: reconcile
    name: wallet buys quota
    limits: [{ name: monthly, kind: quota, limit: 1000, period: monthly }]
    topUp: { limit: monthly, increment: 100, price: { units: 100, amount: "1.00" } }
`;
const RECONCILE_MS = 200;

/** The reconciler pass a store call belongs to (passes may overlap on a loaded machine). */
const currentPass = new AsyncLocalStorage<Pass>();

/** Delegates to the real store; while `dropping`, every capacity write is lost (throws, as a dropped connection). A
 * reconciler pass keeps the fault state it started with, so a pass started during the fault never repairs anything
 * and a pass started after it always can — whatever the timing. */
class DroppingStore {
  dropping = false;
  dropped = 0;
  readonly inner: CounterStore;
  constructor(inner: CounterStore) {
    this.inner = inner;
  }
  wrap(): CounterStore {
    const inner = this.inner;
    return {
      reserve: (c) => inner.reserve(c),
      release: (c) => inner.release(c),
      setCapacity: async (accountId: string, entries: readonly CapacityEntry[], version?: number) => {
        if (currentPass.getStore()?.faulty ?? this.dropping) {
          this.dropped++;
          throw new Error("test fault: capacity write lost");
        }
        return inner.setCapacity(accountId, entries, version);
      },
      restore: (a, e, s, v) => inner.restore(a, e, s, v),
      exportState: (a, l) => inner.exportState(a, l),
      sweep: (a) => inner.sweep(a),
      sweepAndExport: (a, l) => inner.sweepAndExport(a, l),
      capacityVersions: (ids) => inner.capacityVersions(ids),
      now: () => inner.now(),
      ping: () => inner.ping(),
      close: () => inner.close(),
    };
  }
}

interface Pass {
  seq: number;
  /** Whether the store dropped writes when the pass started. */
  faulty: boolean;
  /** Accounts the pass brought in line (stale ones synced + versions found behind and repaired). */
  repaired: number;
  /** Accounts whose re-sync failed in the pass (reported, skipped: the pass goes on). */
  failedAccounts: number;
  failed?: string;
}

describe("reconciler repairs a lost Redis capacity write", () => {
  let t: TestApp;
  let c: Clients;
  let faults: DroppingStore;
  const passes: Pass[] = [];
  let onPass: ((p: Pass) => void) | undefined;

  beforeAll(async () => {
    t = await startTestApp({
      clock: false,
      env: { QUOTA_RECONCILE_INTERVAL_MS: String(RECONCILE_MS), QUOTA_FLUSH_INTERVAL_MS: "600000" },
      wrapStore: (inner) => (faults = new DroppingStore(inner)).wrap(),
    });
    // Observe the reconciler's own passes: the interval timer calls `capacity.reconcile()` on this object.
    const capacity = t.app.capacity;
    const reconcile = capacity.reconcile.bind(capacity);
    capacity.reconcile = async (max?: number, onError?: (accountId: string, err: unknown) => void, verify?: number) => {
      const pass: Pass = { seq: passes.length, faulty: faults.dropping, repaired: 0, failedAccounts: 0 };
      passes.push(pass);
      try {
        const r = await currentPass.run(pass, () => reconcile(max, onError, verify));
        pass.repaired = r.synced + r.repaired;
        pass.failedAccounts = r.failed;
        return r;
      } catch (e) {
        pass.failed = String(e);
        throw e;
      } finally {
        onPass?.(pass);
      }
    };
    c = clients("grpc-js", { grpc: t.app.grpcPort, http: t.app.httpPort });
    await applyPlans(c, PLANS);
  });
  afterAll(async () => {
    c?.close();
    await t?.stop();
  });

  /** Resolves, once it has finished, with the first reconciler pass (run by the interval timer) that starts after
   * this call. */
  const nextPass = (): Promise<Pass> => {
    const after = passes.length;
    return new Promise((resolve) => {
      onPass = (p) => {
        if (p.seq === after) {
          onPass = undefined;
          resolve(p);
        }
      };
    });
  };
  const liveLimit = async (apiKey: string) => {
    const a = await c.quota.checkAndReserve({ apiKey, product: "api", method: "get", mode: Mode.CHECK_ONLY });
    expect(a.decision).toBe(Decision.ALLOWED);
    return a.limits.find((l) => l.name === "monthly")!.limit;
  };
  const syncState = async (accountId: string) => {
    const rows = await t.app.db.listCapacityStale(1000);
    return rows.some((r) => r.id === accountId) ? "stale" : "synced";
  };

  it("commits the top-up in Postgres, leaves Redis stale while the write is lost, and the next reconciler pass repairs it", async () => {
    const s = await seedAccount(c, "reconcile");
    await deposit(c, s.accountId, "prepaid", 5n);
    expect(await liveLimit(s.apiKey)).toBe(1000n); // the account is present in Redis

    faults.dropping = true;
    const answer = await c.quota.topUp({ apiKey: s.apiKey, idempotencyKey: "lost-write", target: { case: "quota", value: { lines: [{ units: 100n }] } }, funding: { case: "fromWallet", value: {} } });
    expect(answer.newLimit).toBe(1100n); // acknowledged: committed in Postgres
    expect(faults.dropped).toBeGreaterThan(0); // the post-commit capacity write really was lost
    expect(await syncState(s.accountId)).toBe("stale"); // capacity_version > capacity_synced

    // While writes are lost, reconciler passes run and cannot repair it: Redis still serves the old capacity.
    const failing = await nextPass();
    expect(failing.faulty).toBe(true);
    expect(failing.repaired).toBe(0);
    expect(failing.failedAccounts).toBeGreaterThanOrEqual(1); // reported and skipped, the pass itself goes on
    expect(await liveLimit(s.apiKey)).toBe(1000n);
    expect(await syncState(s.accountId)).toBe("stale");

    // The store is writable again: the very next pass of the reconciler repairs it (no further pass needed).
    faults.dropping = false;
    const repairing = await nextPass();
    expect(repairing.failed).toBeUndefined();
    expect(repairing.failedAccounts).toBe(0);
    expect(repairing.repaired).toBeGreaterThanOrEqual(1);
    expect(await liveLimit(s.apiKey)).toBe(1100n);
    expect(await syncState(s.accountId)).toBe("synced");
    // The interval timer keeps calling it: passes are the timer's, one per QUOTA_RECONCILE_INTERVAL_MS.
    expect(passes.length).toBeGreaterThanOrEqual(2);
  });
});
