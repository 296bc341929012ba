/**
 * KeyCache: key id -> everything CheckAndReserve needs (key, subscription, plan), so the hot path never touches
 * Postgres.
 *
 * - Entries are dropped when the ChangeBus says their account changed (every replica hears it); a change also
 *   drops every remembered unknown key (a key created on another replica must be found at once).
 * - Past `ttlMs` an entry is stale: it is served at once and refreshed in the background (stale-while-revalidate),
 *   so a slow or black-holed Postgres never holds a call; a refresh that fails keeps the stale entry.
 * - Unknown key ids are remembered for `negativeTtlMs`, so a flood of random ids does not reach Postgres.
 * - At most `maxEntries` entries (known and unknown); the least recently used go first, so random ids cannot push
 *   the keys in real use out.
 * - A presented secret that matched is remembered with the entry (compared in constant time, without hashing
 *   again): the hot path computes SHA-256 once per key and cache entry, not once per call.
 * - Account configurations for GetLimits are cached for `configTtlMs` (invalidated the same way).
 */
import { timingSafeEqual } from "node:crypto";
import { secretMatches } from "./ids.ts";
import type { AccountConfig, Clock, Database, KeyRecord, PlanRecord, SubscriptionRecord } from "./ports.ts";

/** Heap a cached key may cost, with margin: ~3 KB of live heap per cached key measured with its account's other
 * per-account state (heap snapshots of bench/hot-path.ts, docs/performance.md; 4.7 KB before session 17), rounded
 * up for the garbage a busy process carries between two collections. */
export const KEY_CACHE_BYTES_PER_ENTRY = 8_192;

/**
 * The key cache's bound when none is configured: what a third of the heap limit holds at
 * KEY_CACHE_BYTES_PER_ENTRY (the rest is for the ~70 MB of modules, the other caches and the garbage between two
 * collections), between 1,000 and 100,000. Node sizes its heap from the container's memory limit (a 512 MiB pod gets
 * ~259 MB), so a fixed 100,000 keys would run such a process out of heap once that many distinct keys were seen.
 */
export function defaultKeyCacheEntries(heapLimitBytes: number): number {
  return Math.max(1_000, Math.min(100_000, Math.floor(heapLimitBytes / 3 / KEY_CACHE_BYTES_PER_ENTRY)));
}

/** Most keys one Postgres load takes (the `IN` lists stay small). */
const MAX_LOAD_BATCH = 500;

export interface KeyContext {
  key: KeyRecord;
  subscription: SubscriptionRecord;
  plan: PlanRecord;
}

interface Entry {
  ctx: KeyContext | null;
  loadedAt: number;
  /** The last presented secret that matched this entry's hash. A string (~60 bytes), not a Buffer of its own
   * (~500 bytes with its ArrayBuffer and backing store) nor a pool slice (which pins a shared 8 KB slab). */
  verified?: string;
}

export interface KeyCacheOptions {
  ttlMs?: number;
  negativeTtlMs?: number;
  maxEntries?: number;
  configTtlMs?: number;
  /** A background refresh failed (the stale entry keeps serving). */
  onRefreshError?: (keyId: string, err: unknown) => void;
  /** Told of every lookup: served from the cache (hit) or loaded from Postgres (miss). For metrics. */
  onLookup?: (hit: boolean) => void;
}

export class KeyCache {
  readonly #db: Database;
  readonly #clock: Clock;
  /** Map order is recency order: a hit moves its entry to the end; eviction takes the first. */
  readonly #entries = new Map<string, Entry>();
  /** The cached key ids of each account: the one id itself while an account has one (most do), a Set past that (a
   * Set with its table costs ~300 bytes per account). */
  readonly #byAccount = new Map<string, string | Set<string>>();
  readonly #negative = new Set<string>();
  readonly #inflight = new Map<string, Promise<KeyContext | null>>();
  readonly #pendingLoads = new Map<string, { resolve: (c: KeyContext | null) => void; reject: (e: unknown) => void }>();
  readonly #configs = new Map<string, { config: AccountConfig | null; loadedAt: number; generation: number }>();
  readonly #ttl: number;
  readonly #negativeTtl: number;
  readonly #max: number;
  readonly #configTtl: number;
  readonly #onRefreshError: (keyId: string, err: unknown) => void;
  readonly #onLookup: ((hit: boolean) => void) | undefined;
  /** Bumped by every invalidation: a load that started before one must not cache what it read. */
  #generation = 0;
  /** Postgres lookups made (key misses and refreshes; account configurations), and secrets hashed: for tests and
   * metrics. */
  loads = 0;
  /** Postgres round trips those loads took (one `loadKeyContexts` per batch of a tick's loads). */
  loadRounds = 0;
  configLoads = 0;
  secretHashes = 0;

  constructor(db: Database, clock: Clock, options: KeyCacheOptions = {}) {
    this.#db = db;
    this.#clock = clock;
    this.#ttl = options.ttlMs ?? 60_000;
    this.#negativeTtl = options.negativeTtlMs ?? 5_000;
    this.#max = Math.max(1, options.maxEntries ?? 100_000);
    this.#configTtl = options.configTtlMs ?? 1_000;
    this.#onRefreshError = options.onRefreshError ?? (() => {});
    this.#onLookup = options.onLookup;
  }

  get size(): number {
    return this.#entries.size;
  }

  /**
   * Resolves a key id; null when it does not exist. Waits for Postgres only on a miss (bounded by the database's
   * own timeouts); throws only then, when Postgres fails.
   */
  async get(keyId: string): Promise<KeyContext | null> {
    const hit = this.cached(keyId);
    if (hit !== undefined) return hit;
    this.#onLookup?.(false);
    return this.#loadOnce(keyId);
  }

  /**
   * What get() answers when the cache can answer it without loading (a hit, counted as one: the context, or null for
   * a key known not to exist), without a promise; undefined when the key must be loaded (then call get()).
   */
  cached(keyId: string): KeyContext | null | undefined {
    const e = this.#entries.get(keyId);
    if (!e) return undefined;
    this.#touch(keyId, e);
    const age = this.#clock.now() - e.loadedAt;
    if (e.ctx === null) {
      if (age >= this.#negativeTtl) return undefined;
    } else if (age >= this.#ttl) {
      this.#refresh(keyId);
    }
    this.#onLookup?.(true);
    return e.ctx;
  }

  /** The cached context of a key, without loading (undefined when not cached). */
  peek(keyId: string): KeyContext | null | undefined {
    return this.#entries.get(keyId)?.ctx;
  }

  /**
   * Whether `secret` is the key's secret: a secret that matched before is compared directly (constant time), any
   * other is hashed and compared with the stored hash, and remembered when it matches.
   */
  verify(keyId: string, ctx: KeyContext, secret: string): boolean {
    const e = this.#entries.get(keyId);
    if (e?.ctx === ctx && e.verified !== undefined && e.verified.length === secret.length) {
      // Compared as bytes in constant time; both buffers are transient (slices of Node's pool, never kept).
      const presented = Buffer.from(secret);
      const known = Buffer.from(e.verified);
      if (known.length === presented.length && timingSafeEqual(known, presented)) return true;
    }
    this.secretHashes++;
    if (!secretMatches(secret, ctx.key.secretHash)) return false;
    // A copy of its own: the secret arrived as a slice of a decoded request, and keeping the slice would keep that
    // request alive for as long as the key is cached.
    if (e?.ctx === ctx) e.verified = Buffer.from(secret).toString();
    return true;
  }

  /** The account's configuration for GetLimits: cached briefly, dropped with the account's keys on a change. */
  async accountConfig(accountId: string): Promise<AccountConfig | null> {
    const now = this.#clock.now();
    const c = this.#configs.get(accountId);
    if (c && c.generation === this.#generation && now - c.loadedAt < this.#configTtl) return c.config;
    const generation = this.#generation;
    this.configLoads++;
    const config = await this.#db.loadAccountConfig(accountId, new Date(now));
    if (generation === this.#generation) {
      if (this.#configs.size >= this.#max) this.#configs.delete(this.#configs.keys().next().value!);
      this.#configs.set(accountId, { config, loadedAt: now, generation });
    }
    return config;
  }

  /** Drops every cached key of an account ("*" = everything, e.g. after a plan changed), and all unknown keys. */
  invalidate(accountId: string): void {
    this.#generation++;
    this.#configs.clear();
    if (accountId === "*") {
      this.#entries.clear();
      this.#byAccount.clear();
      this.#negative.clear();
      return;
    }
    const ids = this.#byAccount.get(accountId);
    if (typeof ids === "string") this.#entries.delete(ids);
    else for (const keyId of ids ?? []) this.#entries.delete(keyId);
    this.#byAccount.delete(accountId);
    for (const keyId of this.#negative) this.#entries.delete(keyId);
    this.#negative.clear();
  }

  #touch(keyId: string, e: Entry): void {
    this.#entries.delete(keyId);
    this.#entries.set(keyId, e);
  }

  #refresh(keyId: string): void {
    if (this.#inflight.has(keyId)) return;
    this.#loadOnce(keyId).catch((err) => this.#onRefreshError(keyId, err));
  }

  #loadOnce(keyId: string): Promise<KeyContext | null> {
    let p = this.#inflight.get(keyId);
    if (!p) {
      p = this.#load(keyId).finally(() => this.#inflight.delete(keyId));
      this.#inflight.set(keyId, p);
    }
    return p;
  }

  /** Loads of the same tick go to Postgres together: one `loadKeyContexts` (3 queries) for up to MAX_LOAD_BATCH keys,
   * not 3 queries per key — the cost of many accounts' first touches and of their refreshes past the TTL. */
  #load(keyId: string): Promise<KeyContext | null> {
    return new Promise<KeyContext | null>((resolve, reject) => {
      this.#pendingLoads.set(keyId, { resolve, reject });
      if (this.#pendingLoads.size === 1) process.nextTick(() => this.#flushLoads());
    });
  }

  #flushLoads(): void {
    const batch = [...this.#pendingLoads];
    this.#pendingLoads.clear();
    for (let i = 0; i < batch.length; i += MAX_LOAD_BATCH) void this.#loadBatch(batch.slice(i, i + MAX_LOAD_BATCH));
  }

  async #loadBatch(batch: Array<[string, { resolve: (c: KeyContext | null) => void; reject: (e: unknown) => void }]>): Promise<void> {
    const generation = this.#generation;
    this.loads += batch.length;
    this.loadRounds++;
    let found: Map<string, KeyContext>;
    try {
      found = await this.#db.loadKeyContexts(batch.map(([id]) => id));
    } catch (err) {
      for (const [, p] of batch) p.reject(err);
      return;
    }
    for (const [keyId, p] of batch) p.resolve(this.#store(keyId, found.get(keyId) ?? null, generation));
  }

  #store(keyId: string, ctx: KeyContext | null, generation: number): KeyContext | null {
    // A change was announced while this load ran: what it read may predate the change, so use it once, not cache it.
    if (generation !== this.#generation) return ctx;
    const previous = this.#entries.get(keyId);
    this.#entries.delete(keyId);
    while (this.#entries.size >= this.#max) this.#evictOldest();
    const entry: Entry = { ctx, loadedAt: this.#clock.now() };
    // The same key record: a secret verified against it stays verified.
    if (previous?.verified && previous.ctx && ctx && previous.ctx.key.secretHash === ctx.key.secretHash) entry.verified = previous.verified;
    this.#entries.set(keyId, entry);
    if (ctx) {
      this.#negative.delete(keyId);
      const account = ctx.key.accountId;
      const ids = this.#byAccount.get(account);
      if (ids === undefined || ids === keyId) this.#byAccount.set(account, keyId);
      else if (typeof ids === "string") this.#byAccount.set(account, new Set([ids, keyId]));
      else ids.add(keyId);
    } else {
      this.#negative.add(keyId);
    }
    return ctx;
  }

  #evictOldest(): void {
    const oldest = this.#entries.keys().next();
    if (oldest.done) return;
    const keyId = oldest.value;
    const e = this.#entries.get(keyId)!;
    this.#entries.delete(keyId);
    if (e.ctx) {
      const account = e.ctx.key.accountId;
      const ids = this.#byAccount.get(account);
      // An account none of whose keys is cached any more is forgotten (an LRU that many accounts pass through would
      // otherwise keep one entry per account ever seen).
      if (ids === keyId) this.#byAccount.delete(account);
      else if (typeof ids === "object" && ids.delete(keyId) && ids.size === 1) this.#byAccount.set(account, ids.values().next().value!);
    }
    else this.#negative.delete(keyId);
  }
}
