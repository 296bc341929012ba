/**
 * The CounterStore port: where hot usage state lives (Redis in production, memory in the embedded default).
 *
 * Contract (proven for both implementations by test/contract/counter-store.contract.ts):
 * - `reserve` checks every limit of one call and, only when all pass, applies all of them and stores the
 *   reservation — one atomic step. A denial changes no counter.
 * - Time is the store's own clock (Redis TIME), unless the store was built with an explicit clock (tests).
 * - Every amount is an integer below 2^53 (Redis Lua numbers are doubles); the core validates inputs to 1e15 per call.
 * - State of one account never depends on another account's (all keys share the account hash tag).
 * - Idempotent on the reservation id: a reserve whose id is already stored (open or settled) returns the stored
 *   outcome and applies nothing; a CANCEL that finds nothing leaves a tombstone, so a reserve of that id arriving
 *   later (a command resent after a reconnect) is a no-op. Settled results, tombstones and idempotency ids are kept
 *   for a bounded grace past the reservation's TTL (`retentionGraceMs`), so an account's memory is bounded by its
 *   call rate, not its history.
 * - An idempotency id recorded by a SHADOW call is never replayed to an ENFORCE or CHECK_ONLY call.
 */

export type LimitKind = "RATE" | "QUOTA" | "CONCURRENCY" | "BUDGET" | "WINDOW";
export type DenyReasonName =
  | "RATE_LIMITED"
  | "QUOTA_EXHAUSTED"
  | "CONCURRENCY_LIMITED"
  | "BUDGET_EXHAUSTED"
  | "KEY_EXPIRED"
  | "SUBSCRIPTION_ENDED"
  | "SUBSCRIPTION_NOT_STARTED"
  | "OUTSIDE_ACCESS_WINDOW";
export type Mode = "ENFORCE" | "CHECK_ONLY" | "SHADOW";
export type ExpiryPolicy = "charge" | "refund";

/** How a QUOTA/BUDGET limit's period works. */
export type Period =
  /** Calendar periods (daily, monthly anniversary). The core computes the boundaries around its own clock; the
   * store picks the window that contains store time: [b0,b1) previous, [b1,b2) current, [b2,b3) next. */
  | { type: "fixed"; bounds: readonly [number, number, number, number] }
  /** Rolling window made of buckets; usage in a bucket counts until the whole bucket leaves the window, so the
   * window over-counts by at most one bucket's usage (never under-counts: no over-admission). */
  | { type: "rolling"; windowMs: number; bucketMs: number }
  /** Never resets (budgets). */
  | { type: "none" };

export interface CounterLimit {
  /** State id, unique within the account: "<scope>:<owner>:<name>". Only [A-Za-z0-9_:.-]. */
  id: string;
  kind: LimitKind;
  /** Which amount of the call this limit counts: "calls" (1 per call), "units", "spend" or a custom meter. */
  meter: string;
  /** This call's amount for `meter` (0 when peeking). */
  amount: bigint;
  /** RATE and CONCURRENCY: the maximum. QUOTA with a fixed capacity (key sub-limits). Otherwise the capacity comes
   * from `setCapacity`. */
  limit?: bigint;
  /** RATE: the sliding window. */
  windowMs?: number;
  /** QUOTA and BUDGET. */
  period?: Period;
  /** QUOTA: the call may go past the capacity (the excess is recorded as overage). */
  overage?: boolean;
  /** WINDOW: open intervals as [startMs, endMs) of the UTC day. */
  blocks?: ReadonlyArray<readonly [number, number]>;
}

/** A time gate on the whole call: key expiry, subscription start and end. */
export interface Gate {
  reason: "KEY_EXPIRED" | "SUBSCRIPTION_ENDED" | "SUBSCRIPTION_NOT_STARTED";
  /** Denied before this time (available_at = from). */
  from?: number;
  /** Denied from this time on. */
  until?: number;
}

export interface ReserveCommand {
  accountId: string;
  reservationId: string;
  idempotencyId?: string;
  /** A hash of what the call asks for (product, method, amounts, mode): an idempotency id already recorded for another
   * hash answers IDEMPOTENCY_MISMATCH and applies nothing. Records without a hash match any request. */
  requestHash?: string;
  mode: Mode;
  ttlMs: number;
  /** The product of the call; grants restricted to another product do not count. */
  product: string;
  expiryPolicy: ExpiryPolicy;
  gates: readonly Gate[];
  limits: readonly CounterLimit[];
}

export interface SourceState {
  /** "base" for the periodic allowance (plan + add-ons), otherwise the grant id. */
  id: string;
  amount: bigint;
  used: bigint;
  priority: number;
  expiresAt?: number;
  product: string;
}

export interface LimitState {
  limit: bigint;
  used: bigint;
  remaining: bigint;
  resetAt?: number;
  /** Overage in the current window. */
  overage: bigint;
  /** QUOTA: overage units ever charged on this limit (never resets; billed later). */
  overageTotal?: bigint;
  exceeded: boolean;
  sources?: SourceState[];
}

export interface ReserveResult {
  /** NEED_RESTORE: the account's state is not in the store (first touch, or the store lost its data): the caller
   * must `restore` it from the source of truth and call again. IDEMPOTENCY_MISMATCH: the idempotency id belongs to
   * another request (nothing applied). */
  outcome: "ALLOWED" | "DENIED" | "NEED_RESTORE" | "IDEMPOTENCY_MISMATCH";
  reason?: DenyReasonName;
  /** In SHADOW mode: the reason it would have been denied (outcome is ALLOWED). */
  shadowReason?: DenyReasonName;
  deniedLimitId?: string;
  retryAfterMs?: number;
  availableAt?: number;
  /** Set when a reservation was stored (ENFORCE/SHADOW allowed, SHADOW would-deny). */
  reservationId?: string;
  overage: boolean;
  /** The reservation (by its id or idempotency id) was stored before: nothing was applied. A replay of a tombstone
   * (the reservation was cancelled before this command arrived) is DENIED with no reason and no reservation. */
  replayed: boolean;
  now: number;
  /** One per command limit, same order. Empty for NEED_RESTORE and replays. */
  states: LimitState[];
}

export interface ReleaseCommand {
  accountId: string;
  reservationId: string;
  outcome: "COMMIT" | "CANCEL";
  /** Actual amounts per meter; a meter not given is charged what was reserved. */
  actual: Readonly<Record<string, bigint>>;
}

export type ReleaseState = "COMMITTED" | "CANCELLED" | "EXPIRED_CHARGED" | "EXPIRED_REFUNDED";

export interface ReleaseResult {
  outcome: "SETTLED" | "REPLAYED" | "NOT_FOUND";
  state?: ReleaseState;
  /** Per meter: what was reserved and what was finally charged. */
  reserved: Record<string, bigint>;
  charged: Record<string, bigint>;
  /** Units charged beyond capacity (over all quota limits of the call, max per limit). */
  overage: bigint;
}

export interface GrantCapacity {
  id: string;
  amount: bigint;
  priority: number;
  validFrom: number;
  /** Undefined: never expires. */
  validUntil?: number;
  /** Creation order ("oldest first" tie-break). */
  seq: number;
  /** "" = every product. */
  product: string;
}

export interface CapacityEntry {
  limitId: string;
  /** The periodic allowance: plan base + add-ons (0 for budgets, whose capacity is grants = deposits). */
  base: bigint;
  basePriority: number;
  grants: GrantCapacity[];
}

/** What a capacity sync did: wrote it; found an equal or newer version stored (nothing to do); found the account
 * absent (nothing written — the account's next call restores it). Only the first two mean the version landed. */
export type CapacityWrite = "written" | "stale" | "absent";

/** What `exportState` returns and `restore` takes: opaque per-limit fields that round-trip between the two. */
export type StateSnapshot = Record<string, Record<string, string>>;

export interface CounterStore {
  reserve(cmd: ReserveCommand): Promise<ReserveResult>;
  release(cmd: ReleaseCommand): Promise<ReleaseResult>;
  /** Replaces every capacity entry of a present account (not the usage). `version` is the account's capacity version
   * in Postgres: a write older than the one already stored is ignored (two syncs racing can never leave the older
   * capacity last). An absent account is left absent — its next call restores it with its usage. Returns
   * what happened. */
  setCapacity(accountId: string, entries: readonly CapacityEntry[], version?: number): Promise<CapacityWrite>;
  /** Restores, for each limit whose state is absent, the snapshot state; sets capacity (unless an equal or newer
   * version is stored) and marks the account present. */
  restore(accountId: string, entries: readonly CapacityEntry[], states: StateSnapshot, version?: number): Promise<boolean>;
  /** The capacity version stored for each account (null: the account is absent), for the reconciler to compare
   * with Postgres (e.g. after a failover to a replica that had not received the last writes). */
  capacityVersions(accountIds: readonly string[]): Promise<Map<string, number | null>>;
  /** Reads the durable part of usage (QUOTA/BUDGET states) of the given limits. */
  exportState(accountId: string, limitIds: readonly string[]): Promise<StateSnapshot>;
  /** Settles expired reservations of the account by their policy; returns how many. */
  sweep(accountId: string): Promise<number>;
  /** `sweep` then `exportState`, as one store operation (one script: the usage flusher's per-account work). */
  sweepAndExport(accountId: string, limitIds: readonly string[]): Promise<{ settled: number; states: StateSnapshot }>;
  /** The store's clock, in ms since the epoch. */
  now(): Promise<number>;
  /** Throws when the store is not reachable. */
  ping(): Promise<void>;
  close(): Promise<void>;
}

/** Settled results, tombstones and idempotency ids are kept this long past the reservation's TTL by default (what a
 * retrying caller needs; configurable: QUOTA_RETENTION_GRACE_MS). */
export const DEFAULT_RETENTION_GRACE_MS = 5 * 60 * 1000;
/** At most this many expired reservations are settled per call (bounded work on the hot path). */
export const SWEEP_BATCH = 16;
