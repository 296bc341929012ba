/**
 * Flushes usage from the counter store to Postgres snapshots on an interval, so that if Redis loses its data the
 * counters are rebuilt from Postgres on first touch. Usage lost in that case is bounded by the flush interval
 * (docs/operations.md). Each replica flushes the accounts it touched; a snapshot is an absolute state read in one
 * atomic script, so replicas writing the same account cannot double-count.
 */
import type { CounterStore } from "./counter-store.ts";
import { durableLimitIds } from "./limits.ts";
import type { Clock, Database } from "./ports.ts";

export class UsageFlusher {
  readonly #db: Database;
  readonly #store: CounterStore;
  readonly #clock: Clock;
  #dirty = new Set<string>();
  #running: Promise<void> | undefined;

  constructor(deps: { db: Database; store: CounterStore; clock: Clock }) {
    this.#db = deps.db;
    this.#store = deps.store;
    this.#clock = deps.clock;
  }

  touched = (accountId: string): void => {
    this.#dirty.add(accountId);
  };

  /** Flushes every touched account; accounts that fail stay dirty for the next pass. */
  flush(): Promise<void> {
    if (this.#running) return this.#running;
    this.#running = (async () => {
      const batch = this.#dirty;
      this.#dirty = new Set();
      for (const accountId of batch) {
        try {
          await this.#store.sweep(accountId);
          const config = await this.#db.loadAccountConfig(accountId, new Date(this.#clock.now()));
          if (!config) continue;
          const states = await this.#store.exportState(accountId, durableLimitIds(config));
          await this.#db.saveUsageSnapshot(accountId, states);
        } catch {
          this.#dirty.add(accountId);
        }
      }
    })().finally(() => {
      this.#running = undefined;
    });
    return this.#running;
  }

  get pending(): number {
    return this.#dirty.size;
  }
}
