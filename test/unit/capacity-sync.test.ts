/**
 * Issue 7 item 9: a paid top-up must never end up invisible in the counter store while Postgres says it is synced.
 * CapacitySync against the in-memory store and a scripted source of truth whose reads can be held, to replay the
 * race exactly: a restore that read version 4, racing a TopUp that commits version 5 and finds the account absent.
 */
import { describe, expect, it } from "vitest";
import { CapacitySync } from "../../src/core/capacity.ts";
import type { AccountConfig, ChangeBus, Database } from "../../src/core/ports.ts";
import { InMemoryCounterStore } from "../../src/store/memory/in-memory-counter-store.ts";

const ACCOUNT = "acct1";

/** Postgres as far as CapacitySync reads it: one account with a credit wallet (its deposits are the budget). */
class ScriptedDb {
  version = 4;
  synced = 4;
  deposited = 100n;
  /** When set, the next loadAccountConfig reads now but answers only once this resolves. */
  hold: Promise<void> | undefined;
  /** Resolved when a read took the hold (restores read in the tick after they are asked for: they are batched). */
  #heldRead!: () => void;
  heldRead: Promise<void> = new Promise<void>((r) => (this.#heldRead = r));

  async loadAccountConfig(): Promise<AccountConfig> {
    const read = { version: this.version, deposited: this.deposited };
    const hold = this.hold;
    this.hold = undefined;
    if (hold) {
      this.#heldRead();
      await hold;
    }
    return {
      account: { id: ACCOUNT, name: "", createdAt: new Date(0), capacityVersion: read.version, capacitySynced: 0 },
      subscriptions: [{ id: "sub1", accountId: ACCOUNT, planId: "p1", startsAt: new Date(0), endsAt: null, accessBlocks: [], addOns: {}, status: "active", createdAt: new Date(0) }],
      plans: new Map([["p1", { id: "p1", name: "p1", version: 1, spec: { limits: [{ kind: "budget", name: "credit" }] } as never }]]),
      keys: [],
      grants: [],
      wallets: [{ accountId: ACCOUNT, kind: "credit", balance: read.deposited, totalDeposited: read.deposited, spentPosted: 0n }],
    };
  }
  async loadAccountConfigs(ids: readonly string[]): Promise<Map<string, AccountConfig>> {
    return ids.includes(ACCOUNT) ? new Map([[ACCOUNT, await this.loadAccountConfig()]]) : new Map();
  }
  async loadUsageSnapshots() {
    return new Map();
  }
  async markCapacitySynced(_id: string, version: number) {
    this.synced = Math.max(this.synced, version);
  }
  async markCapacitySyncedMany(rows: ReadonlyArray<{ accountId: string; version: number }>) {
    for (const r of rows) await this.markCapacitySynced(r.accountId, r.version);
  }
  async listCapacityStale() {
    return this.synced < this.version ? [{ id: ACCOUNT, name: "", createdAt: new Date(0), capacityVersion: this.version, capacitySynced: this.synced }] : [];
  }
  async listAccountVersions(after: string) {
    return ACCOUNT > after ? [{ id: ACCOUNT, capacityVersion: this.version }] : [];
  }
}

const bus: ChangeBus = { publish: async () => {}, subscribe: () => {}, close: async () => {} };

function setup() {
  const db = new ScriptedDb();
  const store = new InMemoryCounterStore();
  const sync = new CapacitySync({ db: db as unknown as Database, store, clock: { now: () => Date.now() }, bus });
  const budget = async () =>
    (await store.reserve({
      accountId: ACCOUNT, reservationId: "peek", mode: "CHECK_ONLY", ttlMs: 1000, product: "api", expiryPolicy: "charge", gates: [],
      limits: [{ id: "a:credit", kind: "BUDGET", meter: "spend", amount: 0n, period: { type: "none" } }],
    })).states[0]!.limit;
  return { db, store, sync, budget };
}

describe("CapacitySync", () => {
  it("does not mark a top-up synced when its write found the account absent, so a racing restore of an older version is repaired", async () => {
    const { db, store, sync, budget } = setup();
    let release!: () => void;
    db.hold = new Promise<void>((r) => (release = r));
    const restoring = sync.restore(ACCOUNT); // reads version 4, then stalls
    await db.heldRead;
    // the TopUp commits version 5 and syncs: the account is not in the store yet
    db.version = 5;
    db.deposited = 150n;
    await sync.afterCommit(ACCOUNT);
    release();
    await restoring; // the restore lands version 4 last
    expect((await store.capacityVersions([ACCOUNT])).get(ACCOUNT)).toBe(4);
    expect(db.synced).toBe(4); // Postgres must not claim version 5 is in the store
    expect(await sync.reconcile()).toMatchObject({ synced: 1, failed: 0, repaired: 0 });
    expect((await store.capacityVersions([ACCOUNT])).get(ACCOUNT)).toBe(5);
    expect(await budget()).toBe(150n);
    expect(db.synced).toBe(5);
  });

  it("restores asked for in the same tick do not wait for each other: one account's stuck write holds only that account", async () => {
    const db = new ScriptedDb();
    const inner = new InMemoryCounterStore();
    const store = new Proxy(inner, {
      get(target, prop, receiver) {
        if (prop === "restore") return (id: string, ...rest: unknown[]) => (id === "stuck" ? new Promise(() => {}) : (target.restore as (...a: unknown[]) => unknown).call(target, id, ...rest));
        const v = Reflect.get(target, prop, receiver) as unknown;
        return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    }) as InMemoryCounterStore;
    const sync = new CapacitySync({ db: db as unknown as Database, store, clock: { now: () => Date.now() }, bus });
    void sync.restore("stuck"); // a shard failing over: this write never answers
    const outcome = await Promise.race([sync.restore(ACCOUNT).then(() => "restored"), new Promise((r) => setTimeout(() => r("held"), 1_000))]);
    expect(outcome).toBe("restored"); // before: held until the stuck write answered
    expect((await inner.capacityVersions([ACCOUNT])).get(ACCOUNT)).toBe(4);
  });

  it("repairs a store holding an older capacity version than Postgres although Postgres says synced (failover to a lagging replica)", async () => {
    const { db, store, sync, budget } = setup();
    db.version = db.synced = 5;
    db.deposited = 150n;
    await sync.restore(ACCOUNT);
    expect(await budget()).toBe(150n);
    // the new primary had not received the last writes: version 3 of the capacity, usage intact
    store.wipe();
    await store.restore(ACCOUNT, [{ limitId: "a:credit", base: 80n, basePriority: 0, grants: [] }], {}, 3);
    expect(await db.listCapacityStale()).toEqual([]);
    expect(await sync.reconcile()).toMatchObject({ synced: 0, failed: 0, repaired: 1 });
    expect((await store.capacityVersions([ACCOUNT])).get(ACCOUNT)).toBe(5);
    expect(await budget()).toBe(150n);
    // nothing left to repair
    expect(await sync.reconcile()).toMatchObject({ synced: 0, failed: 0, repaired: 0 });
  });
});
