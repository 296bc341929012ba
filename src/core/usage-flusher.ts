/**
 * Flushes usage from the counter store to Postgres snapshots on an interval, so that if Redis loses its data the
 * counters are rebuilt from Postgres on first touch. Usage lost in that case is bounded by the flush interval
 * (docs/operations.md). Each replica flushes the accounts it touched; a snapshot is an absolute state read in one
 * atomic script, so replicas writing the same account cannot double-count.
 */
import type { CounterStore } from "./counter-store.ts";
import { newSortableId } from "./ids.ts";
import { durableLimitIds, limitId } from "./limits.ts";
import type { AccountConfig, Clock, Database } from "./ports.ts";

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
          // Posting first, snapshot second: the snapshot then never holds less spend than the ledger posted.
          await this.#postCreditSpend(config);
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

  /**
   * Posts credit spend to the ledger: the live spend is in the counters; the ledger and the credit wallet's balance
   * follow it here, as "usage" transactions for the change since the last post (a refund after a post reverses).
   * Spend beyond the balance (an actual cost above the estimate at the very end of a budget) becomes a receivable.
   */
  async #postCreditSpend(config: AccountConfig): Promise<void> {
    const budgets = new Set<string>();
    for (const sub of config.subscriptions) {
      for (const l of config.plans.get(sub.planId)?.spec.limits ?? []) if (l.kind === "budget") budgets.add(limitId("account", "", l.name));
    }
    if (budgets.size === 0) return;
    const accountId = config.account.id;
    await this.#db.transaction(async (uow) => {
      // The wallet row is locked before the counters are read: replicas flushing the same account post in turn, each
      // the change since the previous post, so no delta is posted twice or reversed spuriously.
      const w = await uow.lockWallet(accountId, "credit");
      const peek = await this.#store.reserve({
        accountId,
        reservationId: "flush",
        mode: "CHECK_ONLY",
        ttlMs: 1000,
        product: "",
        expiryPolicy: "charge",
        gates: [],
        limits: [...budgets].map((id) => ({ id, kind: "BUDGET" as const, meter: "spend", amount: 0n, period: { type: "none" as const } })),
      });
      if (peek.outcome === "NEED_RESTORE") return;
      // Spend beyond the budget (an actual above the estimate at the very end) sits in the budget's overage.
      const spent = peek.states.reduce((sum, st) => sum + st.used + st.overage, 0n);
      const delta = spent - w.spentPosted;
      if (delta === 0n) return;
      const postings = [];
      if (delta > 0n) {
        const fromBalance = delta < w.balance ? delta : w.balance;
        if (fromBalance > 0n) postings.push({ ledgerAccount: `wallet:${accountId}:credit`, currency: "USD", amount: -fromBalance });
        if (delta > fromBalance) postings.push({ ledgerAccount: `receivable:${accountId}`, currency: "USD", amount: -(delta - fromBalance) });
        w.balance -= fromBalance;
      } else {
        postings.push({ ledgerAccount: `wallet:${accountId}:credit`, currency: "USD", amount: -delta });
        w.balance += -delta;
      }
      postings.push({ ledgerAccount: "revenue:usage", currency: "USD", amount: delta });
      w.spentPosted = spent;
      await uow.saveWallet(w);
      await uow.insertTransaction({
        id: newSortableId("tx"),
        accountId,
        type: "usage",
        createdAt: new Date(this.#clock.now()),
        externalReference: null,
        description: `credit usage posted: spend ${spent} micro-USD in total (${delta > 0n ? "+" : ""}${delta})`,
        postings,
      });
    });
  }

  /** Flushes everything touched so far, including accounts touched while a pass was already running (shutdown). */
  async flushAll(): Promise<void> {
    await this.flush();
    if (this.#dirty.size > 0) await this.flush();
  }

  get pending(): number {
    return this.#dirty.size;
  }
}
