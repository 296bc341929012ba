/**
 * MikroDatabase: the Database port on MikroORM (Postgres or PGlite). One EntityManager fork per unit of work; no
 * global EntityManager. Entities are mapped to the plain records of src/core/ports.ts at this boundary.
 */
import { LockMode, type EntityName } from "@mikro-orm/core";
import { classifyDbError } from "./db-errors.ts";
import type { SqlEntityManager as EntityManager, MikroORM } from "@mikro-orm/postgresql";
import { FailedPreconditionError, IdempotencyInProgressError } from "../../core/errors.ts";
import type {
  AccountConfig,
  AccountRecord,
  Database,
  GrantRecord,
  IdempotencyRecord,
  KeyRecord,
  PlanRecord,
  SubscriptionRecord,
  TransactionRecord,
  UnitOfWork,
  WalletKind,
  WalletRecord,
} from "../../core/ports.ts";
import { parsePlan, type PlanSpec } from "../../core/plan.ts";
import type { StateSnapshot } from "../../core/counter-store.ts";
import {
  AccountEntity,
  ApiKeyEntity,
  GrantEntity,
  IdempotencyEntity,
  LedgerPostingEntity,
  LedgerTransactionEntity,
  PlanEntity,
  SubscriptionEntity,
  UsageSnapshotEntity,
  WalletEntity,
} from "./entities.ts";

type AnyRow = Record<string, unknown>;

const toAccount = (e: AnyRow): AccountRecord => ({
  id: e.id as string,
  name: e.name as string,
  createdAt: e.createdAt as Date,
  capacityVersion: e.capacityVersion as number,
  capacitySynced: e.capacitySynced as number,
});
/** Parsed plans by id, reused while the row is the same (version, name and spec JSON compared, so two databases in
 * one process never share a wrong one): a plan is parsed (zod) once per version, not once per key that reads it, and
 * every key context of a plan shares one spec object (the key cache holds up to 100,000 keys). Plan records are
 * never mutated. */
const parsedPlans = new Map<string, { raw: string; plan: PlanRecord }>();
const MAX_PARSED_PLANS = 10_000;
const toPlan = (e: AnyRow): PlanRecord => {
  const id = e.id as string;
  const version = e.version as number;
  const name = e.name as string;
  const raw = JSON.stringify(e.spec);
  const cached = parsedPlans.get(id);
  if (cached && cached.raw === raw && cached.plan.version === version && cached.plan.name === name) return cached.plan;
  const plan: PlanRecord = { id, name, version, spec: parsePlan(e.spec, `plans.${String(e.id)}`) };
  if (parsedPlans.size >= MAX_PARSED_PLANS) parsedPlans.clear();
  parsedPlans.set(id, { raw, plan });
  return plan;
};
/** Plans are stored as JSON with counts as decimal strings (bigint has no JSON form); parsePlan reads them back. */
const planJson = (spec: PlanSpec): PlanSpec => JSON.parse(JSON.stringify(spec, (_k, v) => (typeof v === "bigint" ? String(v) : v))) as PlanSpec;
const toSubscription = (e: AnyRow): SubscriptionRecord => ({
  id: e.id as string,
  accountId: e.accountId as string,
  planId: e.planId as string,
  startsAt: e.startsAt as Date,
  endsAt: (e.endsAt as Date | null | undefined) ?? null,
  accessBlocks: e.accessBlocks as string[],
  addOns: e.addOns as Record<string, string>,
  status: e.status as SubscriptionRecord["status"],
  createdAt: e.createdAt as Date,
});
const toKey = (e: AnyRow): KeyRecord => ({
  id: e.id as string,
  accountId: e.accountId as string,
  subscriptionId: e.subscriptionId as string,
  name: e.name as string,
  secretHash: e.secretHash as string,
  status: e.status as KeyRecord["status"],
  owner: e.owner as boolean,
  overage: e.overage as boolean,
  subLimits: Object.fromEntries(Object.entries(e.subLimits as Record<string, string>).map(([k, v]) => [k, BigInt(v)])),
  expiresAt: (e.expiresAt as Date | null | undefined) ?? null,
  createdAt: e.createdAt as Date,
});
const toWallet = (e: AnyRow): WalletRecord => ({
  accountId: e.accountId as string,
  kind: e.kind as WalletKind,
  balance: e.balance as bigint,
  totalDeposited: e.totalDeposited as bigint,
  spentPosted: e.spentPosted as bigint,
});
const toGrant = (e: AnyRow): GrantRecord => ({
  id: e.id as string,
  accountId: e.accountId as string,
  subscriptionId: e.subscriptionId as string,
  limitName: e.limitName as string,
  product: e.product as string,
  amount: e.amount as bigint,
  priority: e.priority as number,
  validFrom: e.validFrom as Date,
  validUntil: (e.validUntil as Date | null | undefined) ?? null,
  source: e.source as GrantRecord["source"],
  transactionId: e.transactionId as string,
  createdAt: e.createdAt as Date,
});

/**
 * Rows of `entity` as plain objects with the entities' property names and JS types, without making entities of them:
 * the query builder maps columns to properties (and dates per platform), then each property with a custom type
 * (bigint amounts, JSON) is converted as hydration would (convertToJSValue). For the bulk reads of first touches (key
 * contexts, account configs, usage snapshots: read, mapped to records, never written back), where building,
 * registering and dropping managed entities was a third of the CPU a first touch cost (docs/performance.md, fifth
 * pass). test/integration/db-bulk-reads.test.ts holds the answers equal to the entity reads on Postgres and PGlite.
 */
async function rows<T extends object>(em: EntityManager, entity: EntityName<T>, where: AnyRow, orderBy?: Record<string, "asc" | "desc">): Promise<AnyRow[]> {
  const qb = em.createQueryBuilder(entity).select("*").where(where as never);
  if (orderBy) qb.orderBy(orderBy as never);
  const out = (await qb.execute("all")) as AnyRow[];
  const platform = em.getPlatform();
  const custom = em.getMetadata().get(entity).props.filter((p) => p.customType);
  for (const row of out) {
    for (const p of custom) {
      const v = row[p.name];
      if (v != null) row[p.name] = p.customType!.convertToJSValue(v, platform);
    }
  }
  return out;
}

class MikroUnitOfWork implements UnitOfWork {
  readonly #em: EntityManager;
  constructor(em: EntityManager) {
    this.#em = em;
  }

  async getAccount(id: string) {
    const e = await this.#em.findOne(AccountEntity, { id });
    return e ? toAccount(e as AnyRow) : null;
  }
  async getSubscription(id: string) {
    const e = await this.#em.findOne(SubscriptionEntity, { id });
    return e ? toSubscription(e as AnyRow) : null;
  }
  async listSubscriptions(accountId: string) {
    return (await this.#em.find(SubscriptionEntity, { accountId }, { orderBy: { createdAt: "asc", id: "asc" } })).map((e) => toSubscription(e as AnyRow));
  }
  async getPlan(id: string) {
    const e = await this.#em.findOne(PlanEntity, { id });
    return e ? toPlan(e as AnyRow) : null;
  }
  async getKey(id: string) {
    const e = await this.#em.findOne(ApiKeyEntity, { id });
    return e ? toKey(e as AnyRow) : null;
  }
  async lockWallet(accountId: string, kind: WalletKind): Promise<WalletRecord> {
    // Create-if-absent first (a no-op when it exists), then lock the row for the rest of the transaction.
    await this.#em.execute(
      `insert into wallets (account_id, kind, balance, total_deposited, spent_posted) values (?, ?, 0, 0, 0) on conflict do nothing`,
      [accountId, kind],
    );
    const e = await this.#em.findOneOrFail(WalletEntity, { accountId, kind }, { lockMode: LockMode.PESSIMISTIC_WRITE, refresh: true });
    return toWallet(e as AnyRow);
  }
  async getWallet(accountId: string, kind: WalletKind): Promise<WalletRecord> {
    const e = await this.#em.findOne(WalletEntity, { accountId, kind }, { refresh: true });
    return e ? toWallet(e as AnyRow) : { accountId, kind, balance: 0n, totalDeposited: 0n, spentPosted: 0n };
  }
  async saveWallet(w: WalletRecord) {
    await this.#em.nativeUpdate(WalletEntity, { accountId: w.accountId, kind: w.kind }, { balance: w.balance, totalDeposited: w.totalDeposited, spentPosted: w.spentPosted, updatedAt: new Date() });
  }
  async insertAccount(a: AccountRecord) {
    await this.#em.insert(AccountEntity, { ...a });
  }
  async upsertPlan(p: { id: string; name: string; spec: PlanSpec }): Promise<PlanRecord & { changed: boolean }> {
    const existing = await this.#em.findOne(PlanEntity, { id: p.id }, { lockMode: LockMode.PESSIMISTIC_WRITE });
    if (existing) {
      const version = (existing as AnyRow).version as number;
      // jsonb does not keep key order: compare canonical forms.
      const same = canonical((existing as AnyRow).spec) === canonical(planJson(p.spec)) && (existing as AnyRow).name === p.name;
      if (same) return { ...toPlan(existing as AnyRow), changed: false };
      await this.#em.nativeUpdate(PlanEntity, { id: p.id }, { name: p.name, spec: planJson(p.spec), version: version + 1, updatedAt: new Date() });
      return { id: p.id, name: p.name, spec: p.spec, version: version + 1, changed: true };
    }
    await this.#em.insert(PlanEntity, { id: p.id, name: p.name, spec: planJson(p.spec), version: 1 });
    return { id: p.id, name: p.name, spec: p.spec, version: 1, changed: true };
  }
  async insertSubscription(s: SubscriptionRecord) {
    await this.#em.insert(SubscriptionEntity, { ...s });
  }
  async saveSubscription(s: SubscriptionRecord) {
    await this.#em.nativeUpdate(SubscriptionEntity, { id: s.id }, { endsAt: s.endsAt, addOns: s.addOns, accessBlocks: s.accessBlocks, status: s.status });
  }
  async insertKey(k: KeyRecord) {
    await this.#em.insert(ApiKeyEntity, { ...k, subLimits: stringMap(k.subLimits) });
  }
  async saveKey(k: KeyRecord) {
    await this.#em.nativeUpdate(
      ApiKeyEntity,
      { id: k.id },
      { status: k.status, revokedAt: k.status === "revoked" ? new Date() : null, subLimits: stringMap(k.subLimits), overage: k.overage, expiresAt: k.expiresAt },
    );
  }
  async insertGrant(g: GrantRecord) {
    await this.#em.insert(GrantEntity, { ...g });
  }
  async listActiveGrants(subscriptionId: string, now: Date) {
    const rows = await this.#em.find(GrantEntity, { subscriptionId, $or: [{ validUntil: null }, { validUntil: { $gt: now } }] }, { orderBy: { createdAt: "asc", id: "asc" } });
    return rows.map((g) => toGrant(g as AnyRow));
  }
  async insertTransaction(t: TransactionRecord) {
    const sums = new Map<string, bigint>();
    for (const p of t.postings) sums.set(p.currency, (sums.get(p.currency) ?? 0n) + p.amount);
    for (const [currency, sum] of sums) {
      if (sum !== 0n) throw new FailedPreconditionError("UNBALANCED_TRANSACTION", `postings of ${t.id} sum to ${sum} ${currency}, not zero`);
    }
    await this.#em.insert(LedgerTransactionEntity, {
      id: t.id,
      accountId: t.accountId,
      type: t.type,
      createdAt: t.createdAt,
      externalReference: t.externalReference,
      description: t.description,
    });
    // Posting ids are "<transaction>.<index>", so they list in the order they were written.
    for (const [i, p] of t.postings.entries()) {
      await this.#em.insert(LedgerPostingEntity, { id: `${t.id}.${String(i).padStart(3, "0")}`, transactionId: t.id, ledgerAccount: p.ledgerAccount, currency: p.currency, amount: p.amount });
    }
  }
  async getIdempotency(scope: string, key: string): Promise<IdempotencyRecord | null> {
    const e = await this.#em.findOne(IdempotencyEntity, { scope, key });
    return e ? { scope, key, requestHash: (e as AnyRow).requestHash as string, response: (e as AnyRow).response } : null;
  }
  async claimOnce(scope: string, key: string) {
    const rows = await this.#em.execute<Array<{ key: string }>>(
      `insert into idempotency_records (scope, key, request_hash, response) values (?, ?, '', '{}'::jsonb) on conflict do nothing returning key`,
      [scope, key],
    );
    return rows.length === 1;
  }
  async putIdempotency(r: IdempotencyRecord) {
    await this.#em.insert(IdempotencyEntity, { scope: r.scope, key: r.key, requestHash: r.requestHash, response: r.response as object });
  }
  async claimIdempotency(r: { scope: string; key: string; requestHash: string }, waitMs: number) {
    // The insert waits on a concurrent claim's uncommitted row (unique index); lock_timeout bounds that wait, for
    // this statement only (set back before any other statement of the transaction).
    await this.#em.execute(`set local lock_timeout = ${Math.max(1, Math.floor(waitMs))}`);
    try {
      await this.#em.insert(IdempotencyEntity, { scope: r.scope, key: r.key, requestHash: r.requestHash, response: { pending: true } });
    } catch (e) {
      // 55P03: our lock_timeout; 57014: the statement timeout came first. Either way the other request still runs.
      const code = (e as { code?: string }).code;
      if (code === "55P03" || code === "57014" || /lock timeout|statement timeout/i.test(String((e as Error).message))) {
        throw new IdempotencyInProgressError(`a request with this ${r.scope === "payment" ? "payment reference" : "idempotency key"}`);
      }
      throw e;
    }
    await this.#em.execute(`set local lock_timeout = default`);
  }
  async completeIdempotency(r: IdempotencyRecord) {
    await this.#em.nativeUpdate(IdempotencyEntity, { scope: r.scope, key: r.key }, { requestHash: r.requestHash, response: r.response as object });
  }
  async bumpCapacityVersionForPlans(planIds: string[]): Promise<string[]> {
    if (planIds.length === 0) return [];
    const rows = await this.#em.execute<Array<{ id: string }>>(
      `update accounts set capacity_version = capacity_version + 1
        where id in (select account_id from subscriptions where plan_id in (${planIds.map(() => "?").join(", ")}))
        returning id`,
      planIds,
    );
    return rows.map((r) => r.id);
  }
  async bumpCapacityVersion(accountId: string): Promise<number> {
    const rows = await this.#em.execute<Array<{ v: number }>>(
      `update accounts set capacity_version = capacity_version + 1 where id = ? returning capacity_version as v`,
      [accountId],
    );
    return Number(rows[0]?.v ?? 0);
  }
}

function canonical(v: unknown): string {
  return JSON.stringify(v, (_k, x) =>
    x && typeof x === "object" && !Array.isArray(x) ? Object.fromEntries(Object.keys(x).sort().map((k) => [k, (x as Record<string, unknown>)[k]])) : x,
  );
}

function stringMap(m: Record<string, bigint>): Record<string, string> {
  return Object.fromEntries(Object.entries(m).map(([k, v]) => [k, String(v)]));
}

async function loadPostings(em: EntityManager, txs: AnyRow[]): Promise<TransactionRecord[]> {
  if (txs.length === 0) return [];
  const postings = await em.find(LedgerPostingEntity, { transactionId: { $in: txs.map((t) => t.id as string) } }, { orderBy: { id: "asc" } });
  const byTx = new Map<string, TransactionRecord["postings"]>();
  for (const p of postings as AnyRow[]) {
    const list = byTx.get(p.transactionId as string) ?? [];
    list.push({ ledgerAccount: p.ledgerAccount as string, currency: p.currency as string, amount: p.amount as bigint });
    byTx.set(p.transactionId as string, list);
  }
  return txs.map((t) => ({
    id: t.id as string,
    accountId: t.accountId as string,
    type: t.type as TransactionRecord["type"],
    createdAt: t.createdAt as Date,
    externalReference: (t.externalReference as string | null | undefined) ?? null,
    description: t.description as string,
    postings: byTx.get(t.id as string) ?? [],
  }));
}

export class MikroDatabase implements Database {
  readonly #orm: MikroORM;
  constructor(orm: MikroORM) {
    this.#orm = orm;
  }

  get orm(): MikroORM {
    return this.#orm;
  }

  /** Errors leave as core types (db-errors.ts): DuplicateKeyError, UNAVAILABLE, INSUFFICIENT_BALANCE. */
  async transaction<T>(work: (uow: UnitOfWork) => Promise<T>): Promise<T> {
    try {
      return await this.#orm.em.fork().transactional((em) => work(new MikroUnitOfWork(em)));
    } catch (e) {
      throw classifyDbError(e);
    }
  }

  async read<T>(work: (uow: UnitOfWork) => Promise<T>): Promise<T> {
    try {
      return await work(new MikroUnitOfWork(this.#orm.em.fork()));
    } catch (e) {
      throw classifyDbError(e);
    }
  }

  async loadKeyContexts(keyIds: readonly string[]) {
    const out = new Map<string, { key: KeyRecord; subscription: SubscriptionRecord; plan: PlanRecord }>();
    if (keyIds.length === 0) return out;
    try {
      const em = this.#orm.em.fork();
      const keys = (await rows(em, ApiKeyEntity, { id: { $in: [...new Set(keyIds)] } })).map(toKey);
      if (keys.length === 0) return out;
      const subs = new Map((await rows(em, SubscriptionEntity, { id: { $in: [...new Set(keys.map((k) => k.subscriptionId))] } })).map((e) => [e.id as string, toSubscription(e)]));
      const planIds = [...new Set([...subs.values()].map((sub) => sub.planId))];
      const plans = new Map((planIds.length ? await rows(em, PlanEntity, { id: { $in: planIds } }) : []).map((e) => [e.id as string, toPlan(e)]));
      for (const key of keys) {
        const subscription = subs.get(key.subscriptionId);
        const plan = subscription ? plans.get(subscription.planId) : undefined;
        if (subscription && plan) out.set(key.id, { key, subscription, plan });
      }
      return out;
    } catch (e) {
      throw classifyDbError(e);
    }
  }

  async loadAccountConfig(accountId: string, now: Date): Promise<AccountConfig | null> {
    return (await this.loadAccountConfigs([accountId], now)).get(accountId) ?? null;
  }

  async loadAccountConfigs(accountIds: readonly string[], now: Date): Promise<Map<string, AccountConfig>> {
    const out = new Map<string, AccountConfig>();
    if (accountIds.length === 0) return out;
    const em = this.#orm.em.fork();
    const ids = [...new Set(accountIds)];
    const accounts = await rows(em, AccountEntity, { id: { $in: ids } });
    if (accounts.length === 0) return out;
    const found = accounts.map((a) => a.id as string);
    const [subs, keys, grants, wallets] = await Promise.all([
      rows(em, SubscriptionEntity, { accountId: { $in: found } }, { createdAt: "asc", id: "asc" }),
      rows(em, ApiKeyEntity, { accountId: { $in: found } }, { createdAt: "asc", id: "asc" }),
      rows(em, GrantEntity, { accountId: { $in: found }, $or: [{ validUntil: null }, { validUntil: { $gt: now } }] }, { createdAt: "asc", id: "asc" }),
      rows(em, WalletEntity, { accountId: { $in: found } }),
    ]);
    const planIds = [...new Set(subs.map((s) => s.planId as string))];
    const plans = new Map((planIds.length ? await rows(em, PlanEntity, { id: { $in: planIds } }) : []).map((p) => [p.id as string, toPlan(p)]));
    for (const a of accounts) {
      const account = toAccount(a);
      out.set(account.id, { account, subscriptions: [], plans: new Map(), keys: [], grants: [], wallets: [] });
    }
    const of = (row: unknown) => out.get((row as AnyRow).accountId as string)!;
    for (const s of subs) {
      const c = of(s);
      const sub = toSubscription(s as AnyRow);
      c.subscriptions.push(sub);
      const plan = plans.get(sub.planId);
      if (plan) c.plans.set(plan.id, plan);
    }
    for (const k of keys) of(k).keys.push(toKey(k as AnyRow));
    for (const g of grants) of(g).grants.push(toGrant(g as AnyRow));
    for (const w of wallets) of(w).wallets.push(toWallet(w as AnyRow));
    return out;
  }

  async listAccounts() {
    return (await this.#orm.em.fork().find(AccountEntity, {}, { orderBy: { createdAt: "asc" } })).map((a) => toAccount(a as AnyRow));
  }

  async listPlans() {
    return (await this.#orm.em.fork().find(PlanEntity, {}, { orderBy: { id: "asc" } })).map((p) => toPlan(p as AnyRow));
  }

  async listKeys(accountId: string) {
    return (await this.#orm.em.fork().find(ApiKeyEntity, { accountId }, { orderBy: { createdAt: "asc", id: "asc" } })).map((k) => toKey(k as AnyRow));
  }

  async listWallets(accountId: string) {
    return (await this.#orm.em.fork().find(WalletEntity, { accountId })).map((w) => toWallet(w as AnyRow));
  }

  async listTransactions(q: { accountId?: string; limit: number; before?: { createdAt: Date; id: string } }) {
    const em = this.#orm.em.fork();
    const where: AnyRow = {};
    if (q.accountId) where.accountId = q.accountId;
    if (q.before) where.$or = [{ createdAt: { $lt: q.before.createdAt } }, { createdAt: q.before.createdAt, id: { $lt: q.before.id } }];
    const txs = await em.find(LedgerTransactionEntity, where as never, { orderBy: { createdAt: "desc", id: "desc" }, limit: q.limit });
    return loadPostings(em, txs as AnyRow[]);
  }

  async postingTotals() {
    const rows = await this.#orm.em.fork().execute<Array<{ ledger_account: string; currency: string; total: string }>>(
      `select ledger_account, currency, sum(amount)::text as total from ledger_postings group by ledger_account, currency order by 1, 2`,
    );
    return rows.map((r) => ({ ledgerAccount: r.ledger_account, currency: r.currency, total: BigInt(r.total) }));
  }

  async saveUsageSnapshots(rows: ReadonlyArray<{ accountId: string; states: StateSnapshot }>) {
    const data: unknown[] = [];
    for (const { accountId, states } of rows) for (const [limitId, state] of Object.entries(states)) data.push(accountId, limitId, JSON.stringify(state));
    // One INSERT ... ON CONFLICT DO UPDATE per 1,000 rows, not one statement per limit; written as SQL, not through
    // the ORM's upsertMany, whose entity bookkeeping held the event loop ~60-100 ms per 3,000 rows (every call
    // waited behind a flush pass: the tail latency of many accounts).
    const em = this.#orm.em.fork();
    for (let i = 0; i < data.length; i += 3000) {
      const chunk = data.slice(i, i + 3000);
      await em.execute(
        `insert into usage_snapshots (account_id, limit_id, state, updated_at) values ${Array.from({ length: chunk.length / 3 }, () => "(?, ?, ?::jsonb, now())").join(", ")}
         on conflict (account_id, limit_id) do update set state = excluded.state, updated_at = excluded.updated_at`,
        chunk,
      );
    }
  }

  async loadUsageSnapshot(accountId: string): Promise<StateSnapshot> {
    return (await this.loadUsageSnapshots([accountId])).get(accountId) ?? {};
  }

  async loadUsageSnapshots(accountIds: readonly string[]): Promise<Map<string, StateSnapshot>> {
    const out = new Map<string, StateSnapshot>();
    if (accountIds.length === 0) return out;
    for (const r of await rows(this.#orm.em.fork(), UsageSnapshotEntity, { accountId: { $in: [...new Set(accountIds)] } })) {
      const id = r.accountId as string;
      let states = out.get(id);
      if (!states) out.set(id, (states = {}));
      states[r.limitId as string] = r.state as Record<string, string>;
    }
    return out;
  }

  async markCapacitySynced(accountId: string, version: number) {
    await this.markCapacitySyncedMany([{ accountId, version }]);
  }

  async markCapacitySyncedMany(rows: ReadonlyArray<{ accountId: string; version: number }>) {
    for (let i = 0; i < rows.length; i += 1000) {
      const chunk = rows.slice(i, i + 1000);
      await this.#orm.em.fork().execute(
        `update accounts as a set capacity_synced = greatest(a.capacity_synced, v.version)
         from (values ${chunk.map(() => "(?, ?::int)").join(", ")}) as v(id, version) where a.id = v.id`,
        chunk.flatMap((r) => [r.accountId, r.version]),
      );
    }
  }

  async listCapacityStale(limit: number, afterId = "") {
    return (await this.#orm.em.fork().execute<AnyRow[]>(
      `select id from accounts where capacity_synced < capacity_version and id > ? order by id limit ?`,
      [afterId, limit],
    )).map((r) => ({ id: r.id as string, name: "", createdAt: new Date(0), capacityVersion: 0, capacitySynced: 0 }));
  }

  async listSubscriptionsWithAddOns() {
    const rows = await this.#orm.em.fork().execute<AnyRow[]>(`select id from subscriptions where status = 'active' and add_ons <> '{}'::jsonb order by id`);
    return rows.map((r) => r.id as string);
  }

  async listAccountVersions(after: string, limit: number) {
    return (await this.#orm.em.fork().execute<AnyRow[]>(
      `select id, capacity_version from accounts where id > ? order by id limit ?`,
      [after, limit],
    )).map((r) => ({ id: r.id as string, capacityVersion: Number(r.capacity_version) }));
  }

  async ping() {
    await this.#orm.em.fork().execute("select 1");
  }

  async close() {
    await this.#orm.close(true);
  }
}

