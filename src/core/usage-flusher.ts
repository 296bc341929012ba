/**
 * Flushes usage from the counter store to Postgres snapshots on an interval, so that if Redis loses its data the
 * counters are rebuilt from Postgres on first touch. Usage lost in that case is bounded by the flush interval plus
 * the duration of one pass (docs/operations.md). Each replica flushes the accounts it touched; a snapshot is an
 * absolute state read in one atomic script, so replicas writing the same account cannot double-count.
 *
 * A pass costs O(1) Postgres round trips for snapshots whatever the number of accounts (one multi-row upsert per
 * chunk of rows), and reads account configuration from its own cache (filled in one batched load per pass, dropped
 * by the change bus). Only accounts with a budget need a per-account transaction (the credit wallet is locked while
 * its spend is posted). The Redis part runs with bounded concurrency (auto-pipelined by ioredis).
 */
import type { CounterStore, StateSnapshot } from "./counter-store.ts";
import { newSortableId } from "./ids.ts";
import { durableLimitIds, limitId } from "./limits.ts";
import type { AccountConfig, Clock, Database } from "./ports.ts";

/** What a pass needs of an account's configuration: derived once, cached until the change bus says otherwise. */
interface FlushInfo {
  limitIds: string[];
  budgetIds: string[];
}

export interface UsageFlusherOptions {
  /** Accounts processed at once against the counter store (default 64). */
  concurrency?: number;
  /** How long a derived FlushInfo is trusted without a change-bus message (default 60 s, a safety net). */
  configTtlMs?: number;
  /** Accounts per batched configuration load (default 500). */
  loadBatch?: number;
  /** Called with an account whose flush failed (it stays dirty for the next pass). */
  onAccountError?: (accountId: string, err: unknown) => void;
}

export interface FlushPassStats {
  accounts: number;
  failed: number;
  settled: number;
  ms: number;
}

export class UsageFlusher {
  readonly #db: Database;
  readonly #store: CounterStore;
  readonly #clock: Clock;
  readonly #concurrency: number;
  readonly #configTtl: number;
  readonly #loadBatch: number;
  readonly #onAccountError: ((accountId: string, err: unknown) => void) | undefined;
  #dirty = new Set<string>();
  /**
   * Accounts with reservations that may still be open, and when the last of them (made here) expires. Such an account
   * is swept again once that time has passed, even if no call touches it: an expired reservation on an idle account is
   * settled by policy within one flush interval after its TTL, not at the next call.
   */
  readonly #openUntil = new Map<string, number>();
  readonly #configs = new Map<string, { info: FlushInfo | null; loadedAt: number }>();
  #generation = 0;
  #running: Promise<FlushPassStats> | undefined;
  #queued: Promise<FlushPassStats> | undefined;
  #last: FlushPassStats | undefined;

  constructor(deps: { db: Database; store: CounterStore; clock: Clock } & UsageFlusherOptions) {
    this.#db = deps.db;
    this.#store = deps.store;
    this.#clock = deps.clock;
    this.#concurrency = deps.concurrency ?? 64;
    this.#configTtl = deps.configTtlMs ?? 60_000;
    this.#loadBatch = deps.loadBatch ?? 500;
    this.#onAccountError = deps.onAccountError;
  }

  /**
   * Marks an account whose usage changed. `openUntilMs`: the expiry time of a reservation left open by the call, so the
   * account is swept after it even when idle.
   */
  touched = (accountId: string, openUntilMs?: number): void => {
    this.#dirty.add(accountId);
    if (openUntilMs !== undefined && openUntilMs > (this.#openUntil.get(accountId) ?? 0)) this.#openUntil.set(accountId, openUntilMs);
  };

  /** The change bus said the account's configuration changed ("*": every account). */
  invalidate = (accountId: string): void => {
    this.#generation++;
    if (accountId === "*") this.#configs.clear();
    else this.#configs.delete(accountId);
  };

  /** Flushes every account touched before the call (and idle accounts whose open reservations are due); failures
   * stay dirty. While a pass runs (it took its batch when it started), a call gets the next pass, started when the
   * running one ends; calls made meanwhile share that next pass. */
  flush(): Promise<FlushPassStats> {
    if (this.#running) {
      const after = () => {
        this.#queued = undefined;
        return this.flush();
      };
      return (this.#queued ??= this.#running.then(after, after));
    }
    this.#running = this.#pass().finally(() => {
      this.#running = undefined;
    });
    return this.#running;
  }

  async #pass(): Promise<FlushPassStats> {
    const started = this.#clock.now();
    const batch = this.#dirty;
    this.#dirty = new Set();
    const now = this.#clock.now();
    for (const [accountId, until] of this.#openUntil) {
      if (until > now) continue;
      batch.add(accountId);
      this.#openUntil.delete(accountId);
    }
    const ids = [...batch];
    const stats: FlushPassStats = { accounts: ids.length, failed: 0, settled: 0, ms: 0 };
    const fail = (accountId: string, err: unknown) => {
      stats.failed++;
      this.#dirty.add(accountId);
      this.#onAccountError?.(accountId, err);
    };

    let infos: Map<string, FlushInfo | null>;
    try {
      infos = await this.#infos(ids);
    } catch (err) {
      for (const id of ids) fail(id, err);
      stats.ms = this.#clock.now() - started;
      return (this.#last = stats);
    }

    const rows: Array<{ accountId: string; states: StateSnapshot }> = [];
    let next = 0;
    const worker = async () => {
      while (next < ids.length) {
        const accountId = ids[next++]!;
        const info = infos.get(accountId);
        try {
          if (info && info.budgetIds.length === 0) {
            // No spend to post: settle what is due and read the state in one store call.
            const r = await this.#store.sweepAndExport(accountId, info.limitIds);
            stats.settled += r.settled;
            rows.push({ accountId, states: r.states });
            continue;
          }
          stats.settled += await this.#store.sweep(accountId);
          if (!info) continue; // the account is gone
          // Posting first, snapshot second: the snapshot then never holds less spend than the ledger posted.
          if (info.budgetIds.length > 0) await this.#postCreditSpend(accountId, info.budgetIds);
          rows.push({ accountId, states: await this.#store.exportState(accountId, info.limitIds) });
        } catch (err) {
          fail(accountId, err);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.#concurrency, ids.length) }, worker));

    if (rows.length > 0) {
      try {
        await this.#db.saveUsageSnapshots(rows);
      } catch (err) {
        for (const r of rows) fail(r.accountId, err);
      }
    }
    stats.ms = this.#clock.now() - started;
    return (this.#last = stats);
  }

  /** FlushInfo of every account, from the cache or one batched load per `loadBatch` accounts. */
  async #infos(ids: string[]): Promise<Map<string, FlushInfo | null>> {
    const out = new Map<string, FlushInfo | null>();
    const now = this.#clock.now();
    // Forget configurations past their TTL, so accounts no longer touched do not stay in memory.
    for (const [id, c] of this.#configs) if (now - c.loadedAt >= this.#configTtl) this.#configs.delete(id);
    const missing: string[] = [];
    for (const id of ids) {
      const c = this.#configs.get(id);
      if (c && now - c.loadedAt < this.#configTtl) out.set(id, c.info);
      else missing.push(id);
    }
    for (let i = 0; i < missing.length; i += this.#loadBatch) {
      const chunk = missing.slice(i, i + this.#loadBatch);
      const generation = this.#generation;
      const configs = await this.#db.loadAccountConfigs(chunk, new Date(now));
      for (const id of chunk) {
        const config = configs.get(id);
        const info = config ? flushInfo(config) : null;
        out.set(id, info);
        // A change announced during the load: use what was read once, do not cache it.
        if (generation === this.#generation) this.#configs.set(id, { info, loadedAt: now });
      }
    }
    return out;
  }

  /**
   * Posts credit spend to the ledger: the live spend is in the counters; the ledger and the credit wallet follow it
   * here, as "usage" transactions. Each post moves the wallet and the account's usage receivable to their targets,
   * computed from what was deposited (D) and the spend settled so far (S): the wallet holds max(0, D - S) and the
   * receivable max(0, S - D). Spend beyond the balance is owed; a later reversal (a refund) or deposit pays the
   * receivable down first, and only then credits the wallet — money is always in the right account.
   */
  async #postCreditSpend(accountId: string, budgetIds: string[]): Promise<void> {
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
        limits: budgetIds.map((id) => ({ id, kind: "BUDGET" as const, meter: "spend", amount: 0n, period: { type: "none" as const } })),
      });
      if (peek.outcome === "NEED_RESTORE") return;
      // Spend beyond the budget (an actual above the estimate at the very end) sits in the budget's overage.
      const spent = peek.states.reduce((sum, st) => sum + st.used + st.overage, 0n);
      const deposited = w.totalDeposited;
      // Invariant of every movement of a credit wallet: balance - owed = deposited - spentPosted.
      const owed = w.balance - deposited + w.spentPosted;
      const targetBalance = deposited > spent ? deposited - spent : 0n;
      const targetOwed = spent > deposited ? spent - deposited : 0n;
      const walletMove = targetBalance - w.balance;
      const owedMove = targetOwed - owed;
      const revenue = spent - w.spentPosted;
      if (walletMove === 0n && owedMove === 0n && revenue === 0n) return;
      const postings = [];
      if (walletMove !== 0n) postings.push({ ledgerAccount: `wallet:${accountId}:credit`, currency: "USD", amount: walletMove });
      // A receivable's ledger balance is minus what is owed (an asset of the platform, posted as a debit).
      if (owedMove !== 0n) postings.push({ ledgerAccount: `receivable:${accountId}`, currency: "USD", amount: -owedMove });
      if (revenue !== 0n) postings.push({ ledgerAccount: "revenue:usage", currency: "USD", amount: revenue });
      w.balance = targetBalance;
      w.spentPosted = spent;
      await uow.saveWallet(w);
      await uow.insertTransaction({
        id: newSortableId("tx"),
        accountId,
        type: "usage",
        createdAt: new Date(this.#clock.now()),
        externalReference: null,
        description: revenue !== 0n
          ? `credit usage posted: spend ${spent} micro-USD in total (${revenue > 0n ? "+" : ""}${revenue})`
          : `credit receivable settled from the wallet: ${-walletMove} micro-USD`,
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

  /** Account configurations cached (each within its TTL). */
  get cachedConfigs(): number {
    return this.#configs.size;
  }

  /** Accounts waiting for an open reservation's expiry to be swept. */
  get openAccounts(): number {
    return this.#openUntil.size;
  }

  /** The last finished pass (for metrics and the bench). */
  get lastPass(): FlushPassStats | undefined {
    return this.#last;
  }
}

function flushInfo(config: AccountConfig): FlushInfo {
  const budgets = new Set<string>();
  for (const sub of config.subscriptions) {
    for (const l of config.plans.get(sub.planId)?.spec.limits ?? []) if (l.kind === "budget") budgets.add(limitId("account", "", l.name));
  }
  return { limitIds: durableLimitIds(config), budgetIds: [...budgets] };
}
