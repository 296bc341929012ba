/**
 * Keeps the counter store's capacity in step with Postgres, and rebuilds an account's hot state after the store
 * lost it. Postgres is the source of truth: a top-up commits there first; `sync` then rewrites the account's whole
 * capacity (idempotent), and the reconciler repeats it for any account whose post-commit write was lost.
 *
 * `capacity_synced` is raised only when the version landed in the store (written, or an equal or newer one already
 * there). A sync that finds the account absent marks nothing: a restore that read an older version may be racing
 * it, and the reconciler must still see the account as stale afterwards. The reconciler also compares the version
 * the store holds with Postgres, page by page over all accounts, so a store that lost writes (a failover to a lagging
 * replica) is repaired even though Postgres says "synced".
 */
import type { CounterStore, StateSnapshot } from "./counter-store.ts";
import { capacityOf } from "./limits.ts";
import type { AccountConfig, ChangeBus, Clock, Database } from "./ports.ts";

/** Most accounts one restore round reads from Postgres (the `IN` lists stay small). */
const MAX_RESTORE_BATCH = 500;

interface Waiter {
  resolve: () => void;
  reject: (err: unknown) => void;
}

export class CapacitySync {
  readonly #db: Database;
  readonly #store: CounterStore;
  readonly #clock: Clock;
  readonly #bus: ChangeBus;
  readonly #restoring = new Map<string, Promise<void>>();
  readonly #pendingRestores = new Map<string, Waiter>();
  #reconcileAfter = "";
  /** The reconciler's position in its walk over all accounts (compare store and Postgres versions). */
  #verifyAfter = "";

  readonly #onMarkError: (accountIds: string[], err: unknown) => void;

  constructor(deps: { db: Database; store: CounterStore; clock: Clock; bus: ChangeBus; onMarkError?: (accountIds: string[], err: unknown) => void }) {
    this.#db = deps.db;
    this.#store = deps.store;
    this.#clock = deps.clock;
    this.#bus = deps.bus;
    this.#onMarkError = deps.onMarkError ?? (() => {});
  }

  /** After a commit that changed capacity: rewrite it in the store, mark it synced, tell every replica. */
  async afterCommit(accountId: string): Promise<void> {
    await this.sync(accountId);
    await this.#bus.publish(accountId);
  }

  async sync(accountId: string): Promise<void> {
    const config = await this.#db.loadAccountConfig(accountId, new Date(this.#clock.now()));
    if (!config) return;
    const landed = await this.#store.setCapacity(accountId, capacityOf(config), config.account.capacityVersion);
    if (landed !== "absent") await this.#db.markCapacitySynced(accountId, config.account.capacityVersion);
  }

  /**
   * First touch after the store lost the account (or never had it): capacity plus the last usage snapshot. Restores
   * asked for in the same tick go to Postgres together (the first touches of many accounts, a batch, a Redis that
   * came back empty): per round of up to MAX_RESTORE_BATCH accounts, one batched config load (6 queries), one
   * snapshot query and one UPDATE marking them synced, instead of ~8 queries per account. Per account the order
   * is unchanged: its config is read before its snapshot, and it is marked synced only with the version it restored.
   * A restore resolves once the account's own state is in the store (not when the whole batch is).
   */
  restore(accountId: string): Promise<void> {
    let p = this.#restoring.get(accountId);
    if (!p) {
      p = new Promise<void>((resolve, reject) => {
        this.#pendingRestores.set(accountId, { resolve, reject });
        if (this.#pendingRestores.size === 1) process.nextTick(() => this.#flushRestores());
      }).finally(() => this.#restoring.delete(accountId));
      this.#restoring.set(accountId, p);
    }
    return p;
  }

  #flushRestores(): void {
    const batch = [...this.#pendingRestores];
    this.#pendingRestores.clear();
    for (let i = 0; i < batch.length; i += MAX_RESTORE_BATCH) void this.#restoreBatch(batch.slice(i, i + MAX_RESTORE_BATCH));
  }

  async #restoreBatch(batch: Array<[string, Waiter]>): Promise<void> {
    const ids = batch.map(([id]) => id);
    let configs: Map<string, AccountConfig>;
    let snapshots: Map<string, StateSnapshot>;
    try {
      configs = await this.#db.loadAccountConfigs(ids, new Date(this.#clock.now()));
      snapshots = await this.#db.loadUsageSnapshots(ids);
    } catch (err) {
      for (const [, w] of batch) w.reject(err);
      return;
    }
    // Each account's call goes on as soon as ITS state is in the store: one slow or failing write (a shard failing
    // over) must not hold the other accounts of the batch. Marking them synced follows, in one UPDATE, and nobody
    // waits for it: if it fails, capacity_synced stays low and the reconciler re-syncs them (the safe direction).
    const marks: Array<{ accountId: string; version: number }> = [];
    await Promise.all(
      batch.map(async ([id, w]) => {
        const config = configs.get(id);
        try {
          await this.#store.restore(id, config ? capacityOf(config) : [], snapshots.get(id) ?? {}, config?.account.capacityVersion ?? 0);
        } catch (err) {
          w.reject(err);
          return;
        }
        w.resolve();
        if (config) marks.push({ accountId: id, version: config.account.capacityVersion });
      }),
    );
    if (marks.length > 0) {
      await this.#db.markCapacitySyncedMany(marks).catch((err: unknown) => this.#onMarkError(marks.map((m) => m.accountId), err));
    }
  }

  /**
   * One reconciler pass: re-sync accounts whose capacity version is ahead of what the store was given, then compare
   * the versions the store holds for the next `verify` accounts with Postgres and re-sync any behind. An account that
   * fails is reported and skipped — it stays stale, so a later pass tries it again — and never stops the others. Stale
   * accounts are walked round robin from where the last pass stopped, so accounts that keep failing cannot hold every
   * place of a pass.
   */
  async reconcile(max = 100, onError?: (accountId: string, err: unknown) => void, verify = 1000): Promise<{ synced: number; failed: number; repaired: number }> {
    let stale = await this.#db.listCapacityStale(max, this.#reconcileAfter);
    if (stale.length === 0 && this.#reconcileAfter) stale = await this.#db.listCapacityStale(max);
    this.#reconcileAfter = stale.length === max ? stale[stale.length - 1]!.id : "";
    let failed = 0;
    const resync = async (id: string) => {
      try {
        // Also tell every replica: the change may have come from outside a server (e.g. `plans apply` on the CLI).
        await this.afterCommit(id);
        return true;
      } catch (err) {
        failed++;
        onError?.(id, err);
        return false;
      }
    };
    let synced = 0;
    for (const a of stale) if (await resync(a.id)) synced++;
    let repaired = 0;
    if (verify > 0) {
      const page = await this.#db.listAccountVersions(this.#verifyAfter, verify);
      this.#verifyAfter = page.length < verify ? "" : page[page.length - 1]!.id;
      const held = await this.#store.capacityVersions(page.map((a) => a.id));
      for (const a of page) {
        const v = held.get(a.id);
        // Absent: nothing to repair (its next call restores it from Postgres).
        if (v !== null && v !== undefined && v < a.capacityVersion && (await resync(a.id))) repaired++;
      }
    }
    return { synced, failed, repaired };
  }
}
