/**
 * Keeps the counter store's capacity in step with Postgres, and rebuilds an account's hot state after the store
 * lost it. Postgres is the source of truth: a top-up commits there first; `sync` then rewrites the account's whole
 * capacity (idempotent), and the reconciler repeats it for any account whose post-commit write was lost.
 */
import type { CounterStore } from "./counter-store.ts";
import { capacityOf } from "./limits.ts";
import type { ChangeBus, Clock, Database } from "./ports.ts";

export class CapacitySync {
  readonly #db: Database;
  readonly #store: CounterStore;
  readonly #clock: Clock;
  readonly #bus: ChangeBus;
  readonly #restoring = new Map<string, Promise<void>>();
  #reconcileAfter = "";

  constructor(deps: { db: Database; store: CounterStore; clock: Clock; bus: ChangeBus }) {
    this.#db = deps.db;
    this.#store = deps.store;
    this.#clock = deps.clock;
    this.#bus = deps.bus;
  }

  /** After a commit that changed capacity: rewrite it in the store, mark it synced, tell every replica. */
  async afterCommit(accountId: string): Promise<void> {
    await this.sync(accountId);
    await this.#bus.publish(accountId);
  }

  async sync(accountId: string): Promise<void> {
    const config = await this.#db.loadAccountConfig(accountId, new Date(this.#clock.now()));
    if (!config) return;
    await this.#store.setCapacity(accountId, capacityOf(config), config.account.capacityVersion);
    await this.#db.markCapacitySynced(accountId, config.account.capacityVersion);
  }

  /** First touch after the store lost the account (or never had it): capacity plus the last usage snapshot. */
  restore(accountId: string): Promise<void> {
    let p = this.#restoring.get(accountId);
    if (!p) {
      p = (async () => {
        const config = await this.#db.loadAccountConfig(accountId, new Date(this.#clock.now()));
        const snapshot = await this.#db.loadUsageSnapshot(accountId);
        await this.#store.restore(accountId, config ? capacityOf(config) : [], snapshot, config?.account.capacityVersion ?? 0);
        if (config) await this.#db.markCapacitySynced(accountId, config.account.capacityVersion);
      })().finally(() => this.#restoring.delete(accountId));
      this.#restoring.set(accountId, p);
    }
    return p;
  }

  /**
   * One reconciler pass: re-sync accounts whose capacity version is ahead of what Redis was given. An account that
   * fails is reported and skipped — it stays stale, so the next pass tries it again — and never stops the others.
   */
  async reconcile(max = 100, onError?: (accountId: string, err: unknown) => void): Promise<{ synced: number; failed: number }> {
    // Round robin from where the last pass stopped: accounts that keep failing cannot hold every place of a pass.
    let stale = await this.#db.listCapacityStale(max, this.#reconcileAfter);
    if (stale.length === 0 && this.#reconcileAfter) stale = await this.#db.listCapacityStale(max);
    this.#reconcileAfter = stale.length === max ? stale[stale.length - 1]!.id : "";
    let failed = 0;
    // Also tell every replica: the change may have come from outside a server (e.g. `plans apply` on the CLI).
    for (const a of stale) {
      try {
        await this.afterCommit(a.id);
      } catch (err) {
        failed++;
        onError?.(a.id, err);
      }
    }
    return { synced: stale.length - failed, failed };
  }
}
