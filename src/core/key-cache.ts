/**
 * KeyCache: key id -> everything CheckAndReserve needs (key, subscription, plan), so the hot path never touches
 * Postgres. Entries are dropped when the ChangeBus says their account changed (every replica hears it), and live
 * at most `ttlMs` as a safety net. Unknown key ids are remembered briefly so a flood of bad keys cannot hammer
 * Postgres. When Postgres is down, entries past their TTL keep serving (stale beats unavailable for reads of
 * configuration that changes rarely).
 */
import type { Clock, Database, KeyRecord, PlanRecord, SubscriptionRecord } from "./ports.ts";

export interface KeyContext {
  key: KeyRecord;
  subscription: SubscriptionRecord;
  plan: PlanRecord;
}

interface Entry {
  ctx: KeyContext | null;
  loadedAt: number;
}

export interface KeyCacheOptions {
  ttlMs?: number;
  negativeTtlMs?: number;
  maxEntries?: number;
  /** Told of every lookup: served from the cache (hit) or loaded from Postgres (miss). For metrics. */
  onLookup?: (hit: boolean) => void;
}

export class KeyCache {
  readonly #db: Database;
  readonly #clock: Clock;
  readonly #entries = new Map<string, Entry>();
  readonly #byAccount = new Map<string, Set<string>>();
  readonly #inflight = new Map<string, Promise<KeyContext | null>>();
  readonly #ttl: number;
  readonly #negativeTtl: number;
  readonly #max: number;
  readonly #onLookup: ((hit: boolean) => void) | undefined;
  /** Bumped by every invalidation: a load that started before one must not cache what it read. */
  #generation = 0;

  constructor(db: Database, clock: Clock, options: KeyCacheOptions = {}) {
    this.#db = db;
    this.#clock = clock;
    this.#ttl = options.ttlMs ?? 60_000;
    this.#negativeTtl = options.negativeTtlMs ?? 5_000;
    this.#max = options.maxEntries ?? 100_000;
    this.#onLookup = options.onLookup;
  }

  /** Resolves a key id; null when it does not exist. Throws only when it is not cached and Postgres is down. */
  async get(keyId: string): Promise<KeyContext | null> {
    const e = this.#entries.get(keyId);
    const now = this.#clock.now();
    if (e && now - e.loadedAt < (e.ctx ? this.#ttl : this.#negativeTtl)) {
      this.#onLookup?.(true);
      return e.ctx;
    }
    this.#onLookup?.(false);
    let p = this.#inflight.get(keyId);
    if (!p) {
      p = this.#load(keyId).finally(() => this.#inflight.delete(keyId));
      this.#inflight.set(keyId, p);
    }
    try {
      return await p;
    } catch (err) {
      if (e?.ctx) return e.ctx; // stale but known: keep serving while Postgres is unreachable
      throw err;
    }
  }

  /** The cached context of a key, without loading (undefined when not cached). */
  peek(keyId: string): KeyContext | null | undefined {
    return this.#entries.get(keyId)?.ctx;
  }

  /** Drops every cached key of an account ("*" = everything, e.g. after a plan changed). */
  invalidate(accountId: string): void {
    this.#generation++;
    if (accountId === "*") {
      this.#entries.clear();
      this.#byAccount.clear();
      return;
    }
    for (const keyId of this.#byAccount.get(accountId) ?? []) this.#entries.delete(keyId);
    this.#byAccount.delete(accountId);
  }

  async #load(keyId: string): Promise<KeyContext | null> {
    const generation = this.#generation;
    const ctx = await this.#db.read(async (uow) => {
      const key = await uow.getKey(keyId);
      if (!key) return null;
      const subscription = await uow.getSubscription(key.subscriptionId);
      const plan = subscription ? await uow.getPlan(subscription.planId) : null;
      return subscription && plan ? { key, subscription, plan } : null;
    });
    // A change was announced while this load ran: what it read may predate the change, so use it once, not cache it.
    if (generation !== this.#generation) return ctx;
    if (this.#entries.size >= this.#max) {
      const oldest = this.#entries.keys().next().value;
      if (oldest !== undefined) this.#entries.delete(oldest);
    }
    this.#entries.delete(keyId);
    this.#entries.set(keyId, { ctx, loadedAt: this.#clock.now() });
    if (ctx) {
      let set = this.#byAccount.get(ctx.key.accountId);
      if (!set) this.#byAccount.set(ctx.key.accountId, (set = new Set()));
      set.add(keyId);
    }
    return ctx;
  }
}
