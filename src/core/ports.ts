/**
 * Ports of the core besides the CounterStore: the source of truth (Postgres behind MikroORM), the clock, and the
 * change bus that invalidates caches on every replica. Records are plain data; money and units are bigint.
 */
import type { PlanSpec } from "./plan.ts";
import type { StateSnapshot } from "./counter-store.ts";

export interface Clock {
  now(): number;
}

export const systemClock: Clock = { now: () => Date.now() };

export interface AccountRecord {
  id: string;
  name: string;
  createdAt: Date;
  capacityVersion: number;
  capacitySynced: number;
}

export interface PlanRecord {
  id: string;
  name: string;
  version: number;
  spec: PlanSpec;
}

export type SubscriptionStatus = "active" | "cancelled";

export interface SubscriptionRecord {
  id: string;
  accountId: string;
  planId: string;
  startsAt: Date;
  endsAt: Date | null;
  accessBlocks: string[];
  /** limit name -> add-on package id */
  addOns: Record<string, string>;
  status: SubscriptionStatus;
  createdAt: Date;
}

export type KeyStatus = "active" | "revoked";

export interface KeyRecord {
  id: string;
  accountId: string;
  subscriptionId: string;
  name: string;
  secretHash: string;
  status: KeyStatus;
  owner: boolean;
  overage: boolean;
  /** limit name -> units */
  subLimits: Record<string, bigint>;
  expiresAt: Date | null;
  createdAt: Date;
}

export type WalletKind = "prepaid" | "credit";

export interface WalletRecord {
  accountId: string;
  kind: WalletKind;
  balance: bigint;
  totalDeposited: bigint;
  /** Credit wallets: spend already posted to the ledger (usage transactions). */
  spentPosted: bigint;
}

export interface GrantRecord {
  id: string;
  accountId: string;
  subscriptionId: string;
  limitName: string;
  product: string;
  amount: bigint;
  priority: number;
  validFrom: Date;
  validUntil: Date | null;
  source: "topup" | "adjustment";
  transactionId: string;
  createdAt: Date;
}

export interface PostingRecord {
  ledgerAccount: string;
  currency: string;
  amount: bigint;
}

export type TransactionType = "deposit" | "quota_purchase" | "addon_change" | "adjustment" | "usage";

export interface TransactionRecord {
  id: string;
  accountId: string;
  type: TransactionType;
  createdAt: Date;
  externalReference: string | null;
  description: string;
  postings: PostingRecord[];
}

export interface IdempotencyRecord {
  scope: string;
  key: string;
  requestHash: string;
  response: unknown;
}

/** Everything about one account that limits and capacity are derived from. */
export interface AccountConfig {
  account: AccountRecord;
  subscriptions: SubscriptionRecord[];
  plans: Map<string, PlanRecord>;
  keys: KeyRecord[];
  /** Grants that have not expired (valid_until null or in the future relative to the query's `now`). */
  grants: GrantRecord[];
  wallets: WalletRecord[];
}

/** Operations inside one database transaction. */
export interface UnitOfWork {
  getAccount(id: string): Promise<AccountRecord | null>;
  getSubscription(id: string): Promise<SubscriptionRecord | null>;
  listSubscriptions(accountId: string): Promise<SubscriptionRecord[]>;
  getPlan(id: string): Promise<PlanRecord | null>;
  getKey(id: string): Promise<KeyRecord | null>;
  /** Locks the wallet row (SELECT ... FOR UPDATE) for the rest of the transaction; creates it at zero if absent. */
  lockWallet(accountId: string, kind: WalletKind): Promise<WalletRecord>;
  saveWallet(wallet: WalletRecord): Promise<void>;
  /** Reads a wallet without locking it (zero if absent). */
  getWallet(accountId: string, kind: WalletKind): Promise<WalletRecord>;
  insertAccount(a: AccountRecord): Promise<void>;
  /** Creates or replaces a plan; `changed` is false (and the version kept) when the spec is the same. */
  upsertPlan(p: { id: string; name: string; spec: PlanSpec }): Promise<PlanRecord & { changed: boolean }>;
  insertSubscription(s: SubscriptionRecord): Promise<void>;
  saveSubscription(s: SubscriptionRecord): Promise<void>;
  insertKey(k: KeyRecord): Promise<void>;
  saveKey(k: KeyRecord): Promise<void>;
  insertGrant(g: GrantRecord): Promise<void>;
  /** Grants of a subscription not yet expired at `now`. */
  listActiveGrants(subscriptionId: string, now: Date): Promise<GrantRecord[]>;
  /** Inserts a transaction and its postings; the postings must sum to zero per currency (checked here too). */
  insertTransaction(t: TransactionRecord): Promise<void>;
  getIdempotency(scope: string, key: string): Promise<IdempotencyRecord | null>;
  putIdempotency(r: IdempotencyRecord): Promise<void>;
  /** Inserts a marker (scope, key) unless it exists; true when this transaction inserted it. A concurrent claim of the
   * same key waits for the first transaction, then gets false (exactly-once across replicas). */
  claimOnce(scope: string, key: string): Promise<boolean>;
  /**
   * Claims an idempotency key for this transaction before its work starts (a pending record, written now). A
   * concurrent claim of the same key waits for this transaction: when it commits, the waiter fails with
   * DuplicateKeyError (and answers with the committed result); when it rolls back, the waiter proceeds. A wait
   * longer than `waitMs` throws ABORTED / IDEMPOTENCY_IN_PROGRESS (retryable).
   */
  claimIdempotency(r: { scope: string; key: string; requestHash: string }, waitMs: number): Promise<void>;
  /** Stores the result of a claimed key (same transaction). */
  completeIdempotency(r: IdempotencyRecord): Promise<void>;
  /** Marks the account's Redis capacity stale (the reconciler rewrites it if the post-commit write is lost). */
  bumpCapacityVersion(accountId: string): Promise<number>;
  /** The same for every account subscribed to one of these plans; returns those accounts. */
  bumpCapacityVersionForPlans(planIds: string[]): Promise<string[]>;
}

/**
 * The source of truth. `transaction` and `read` throw only core types: DuplicateKeyError for a unique violation,
 * UnavailableError for a lost connection or a conflict to retry, or what `work` itself threw.
 */
export interface Database {
  /** Runs `work` in one transaction (READ COMMITTED; wallet rows locked explicitly). */
  transaction<T>(work: (uow: UnitOfWork) => Promise<T>): Promise<T>;
  /** Reads outside a transaction. */
  read<T>(work: (uow: UnitOfWork) => Promise<T>): Promise<T>;
  /** What the key cache holds for each key: the key, its subscription and that subscription's plan, for many keys
   * in a fixed number of queries (3). Keys that are absent, or whose subscription or plan is, are missing. */
  loadKeyContexts(keyIds: readonly string[]): Promise<Map<string, { key: KeyRecord; subscription: SubscriptionRecord; plan: PlanRecord }>>;
  loadAccountConfig(accountId: string, now: Date): Promise<AccountConfig | null>;
  /** The same for many accounts in a fixed number of queries (absent accounts are missing from the map). */
  loadAccountConfigs(accountIds: readonly string[], now: Date): Promise<Map<string, AccountConfig>>;
  listAccounts(): Promise<AccountRecord[]>;
  listPlans(): Promise<PlanRecord[]>;
  listKeys(accountId: string): Promise<KeyRecord[]>;
  /** The account's wallets (one query; balances move with usage postings, which announce nothing). */
  listWallets(accountId: string): Promise<WalletRecord[]>;
  listTransactions(q: { accountId?: string; limit: number; before?: { createdAt: Date; id: string } }): Promise<TransactionRecord[]>;
  /** Sum of all postings per (ledger account, currency) — for audits and tests. */
  postingTotals(): Promise<Array<{ ledgerAccount: string; currency: string; total: bigint }>>;
  /** Writes the snapshots of many accounts in one multi-row upsert per chunk of rows (the usage flusher's pass). */
  saveUsageSnapshots(rows: ReadonlyArray<{ accountId: string; states: StateSnapshot }>): Promise<void>;
  loadUsageSnapshot(accountId: string): Promise<StateSnapshot>;
  /** The snapshots of many accounts in one query (an account without one is missing from the map). */
  loadUsageSnapshots(accountIds: readonly string[]): Promise<Map<string, StateSnapshot>>;
  markCapacitySynced(accountId: string, version: number): Promise<void>;
  /** The same for many accounts in one statement (each only raised, never lowered). */
  markCapacitySyncedMany(rows: ReadonlyArray<{ accountId: string; version: number }>): Promise<void>;
  /** Accounts whose capacity is stale, in id order, after `afterId` when given (the reconciler walks them round robin). */
  listCapacityStale(limit: number, afterId?: string): Promise<AccountRecord[]>;
  /** Ids of active subscriptions with at least one add-on (the renewal pass). */
  listSubscriptionsWithAddOns(): Promise<string[]>;
  /** Accounts with id > `after`, in id order, with their capacity version (the reconciler's walk). */
  listAccountVersions(after: string, limit: number): Promise<Array<{ id: string; capacityVersion: number }>>;
  ping(): Promise<void>;
  close(): Promise<void>;
}

/** Tells every replica that an account's configuration changed (keys, plan, add-ons, grants, wallets). */
export interface ChangeBus {
  publish(accountId: string): Promise<void>;
  subscribe(listener: (accountId: string) => void): void;
  close(): Promise<void>;
}
