/**
 * The control-plane use cases: accounts, plans, subscriptions and add-ons, API keys, deposits, adjustments and the
 * ledger. Every write commits in Postgres first; capacity changes are then pushed to the counter store and every
 * replica's cache is invalidated (ChangeBus).
 */
import { createHash } from "node:crypto";
import { ACCOUNT_ID_RE, KEY_ID_RE, NAME_RE, PAYMENT_REFERENCE_MAX, PAYMENT_REFERENCE_RE, REQUEST_ID_RE, SUBSCRIPTION_ID_RE, hashRequest } from "./validation.ts";
import type { CapacitySync } from "./capacity.ts";
import { DuplicateKeyError, FailedPreconditionError, InvalidArgumentError, NotFoundError, QuotaError } from "./errors.ts";
import { formatApiKey, hashSecret, newId, newKeyId, newSecret, newSortableId } from "./ids.ts";
import { ADDON_PERIOD_SCOPE, chargePostings, prorated } from "./add-on-billing.ts";
import { cycleOf } from "./limits.ts";
import { MAX_AMOUNT, formatMicros, moneyToMicros, type MoneyParts } from "./money.ts";
import { addOnMonthlyPrice, parseDuration, parsePlansDocument, type PlanSpec } from "./plan.ts";
import type { AccountRecord, ChangeBus, Clock, Database, GrantRecord, KeyRecord, PlanRecord, SubscriptionRecord, TransactionRecord, UnitOfWork, WalletKind } from "./ports.ts";
import { changeAddOn } from "./add-ons.ts";
import type { QuotaService } from "./quota-service.ts";
import type { TopUpAnswer } from "./top-up.ts";

const ID_FORMATS = {
  account_id: [ACCOUNT_ID_RE, "an account id (1-64 characters of a-z 0-9 _ -)"],
  id: [ACCOUNT_ID_RE, "an account id (1-64 characters of a-z 0-9 _ -)"],
  plan_id: [NAME_RE, "a plan id"],
  subscription_id: [SUBSCRIPTION_ID_RE, "a subscription id (sub_...)"],
  key_id: [KEY_ID_RE, "a key id (16 characters of a-z 2-7)"],
} as const;

/** Ids are checked for shape before they reach the database: a malformed id is INVALID_ARGUMENT naming it. */
function checkId(field: keyof typeof ID_FORMATS, value: string, path: string = field): void {
  if (!value) throw new InvalidArgumentError(path, "is required");
  const [re, what] = ID_FORMATS[field];
  if (!re.test(value)) throw new InvalidArgumentError(path, `is not ${what}`);
}

export interface AdminServiceDeps {
  /** false: leave capacity to the servers' reconciler (the CLI has no counter store of its own). */
  syncCapacity?: boolean;
  db: Database;
  clock: Clock;
  bus: ChangeBus;
  capacity: CapacitySync;
  quota: QuotaService;
  /** How long a create waits for a concurrent one with the same request id before ABORTED (ms). */
  idempotencyWaitMs?: number;
}

export class AdminService {
  readonly #d: AdminServiceDeps;
  constructor(deps: AdminServiceDeps) {
    this.#d = deps;
  }

  /** Runs a create once per request id: a retry returns the first result. */
  async #idempotent<T>(scope: string, requestId: string, request: unknown, work: (uow: UnitOfWork) => Promise<T>, encode: (t: T) => unknown, decode: (raw: unknown) => T): Promise<T> {
    if (requestId && !REQUEST_ID_RE.test(requestId)) throw new InvalidArgumentError("request_id", "must be 1-128 characters of A-Z a-z 0-9 _ . : ~ -");
    const hash = hashRequest(request);
    try {
      return await this.#d.db.transaction(async (uow) => {
        if (requestId) {
          const prior = await uow.getIdempotency(scope, requestId);
          if (prior) {
            if (prior.requestHash !== hash) throw new InvalidArgumentError("request_id", "was already used for a different request");
            return decode(prior.response);
          }
          // Claimed before the work: a concurrent retry waits for this one and then answers with its result.
          await uow.claimIdempotency({ scope, key: requestId, requestHash: hash }, this.#d.idempotencyWaitMs ?? 200);
        }
        const result = await work(uow);
        if (requestId) await uow.completeIdempotency({ scope, key: requestId, requestHash: hash, response: encode(result) });
        return result;
      });
    } catch (e) {
      if (requestId && e instanceof DuplicateKeyError) {
        const prior = await this.#d.db.read((uow) => uow.getIdempotency(scope, requestId));
        if (prior) {
          if (prior.requestHash !== hash) throw new InvalidArgumentError("request_id", "was already used for a different request");
          return decode(prior.response);
        }
      }
      throw e;
    }
  }

  async createAccount(req: { id: string; name: string; requestId: string }): Promise<AccountRecord> {
    if (req.id && !ACCOUNT_ID_RE.test(req.id)) throw new InvalidArgumentError("id", "must be 1-64 characters of a-z 0-9 _ - starting with a letter or digit");
    if (!req.name || req.name.length > 200 || /[\u0000-\u001f]/.test(req.name)) throw new InvalidArgumentError("name", "is required, at most 200 characters, no control characters");
    const id = req.id || newId("acc");
    return this.#idempotent(
      "create-account",
      req.requestId,
      req,
      async (uow) => {
        if (await uow.getAccount(id)) throw new QuotaError("ALREADY_EXISTS", "ACCOUNT_EXISTS", `account ${JSON.stringify(id)} already exists`);
        const a: AccountRecord = { id, name: req.name, createdAt: new Date(this.#d.clock.now()), capacityVersion: 0, capacitySynced: 0 };
        await uow.insertAccount(a);
        await uow.lockWallet(id, "prepaid");
        await uow.lockWallet(id, "credit");
        return a;
      },
      (a) => ({ ...a, createdAt: a.createdAt.toISOString() }),
      (raw) => ({ ...(raw as AccountRecord), createdAt: new Date((raw as { createdAt: string }).createdAt) }),
    );
  }

  async getAccount(id: string): Promise<AccountRecord> {
    checkId("id", id);
    const a = await this.#d.db.read((uow) => uow.getAccount(id));
    if (!a) throw new NotFoundError("account", id);
    return a;
  }

  async applyPlans(document: string, source = "document"): Promise<PlanRecord[]> {
    if (!document) throw new InvalidArgumentError(source, "is required");
    if (document.length > 1_000_000) throw new InvalidArgumentError(source, "is larger than 1 MB");
    const plans = parsePlansDocument(document, source);
    const { stored, affected } = await this.#d.db.transaction(async (uow) => {
      const out: Array<PlanRecord & { changed: boolean }> = [];
      for (const p of plans) out.push(await uow.upsertPlan({ id: p.id, name: p.name, spec: p }));
      // Capacity of every account on a changed plan follows it: marked stale here, so the reconciler of a running
      // server repairs it even when this call's own sync is lost (or was never made: the CLI).
      const changed = out.filter((p) => p.changed).map((p) => p.id);
      return { stored: out.map(({ changed: _c, ...p }) => p), affected: await uow.bumpCapacityVersionForPlans(changed) };
    });
    if (this.#d.syncCapacity !== false) {
      for (const accountId of affected) await this.#d.capacity.sync(accountId).catch(() => {});
    }
    if (affected.length > 0 || stored.length > 0) await this.#d.bus.publish("*");
    return stored;
  }

  listPlans(): Promise<PlanRecord[]> {
    return this.#d.db.listPlans();
  }

  async createSubscription(req: {
    accountId: string;
    planId: string;
    startsAt?: number;
    endsAt?: number;
    accessBlocks: string[];
    addOns: Record<string, string>;
    requestId: string;
  }): Promise<SubscriptionRecord> {
    checkId("account_id", req.accountId);
    checkId("plan_id", req.planId);
    const now = this.#d.clock.now();
    const sub = await this.#idempotent(
      "create-subscription",
      req.requestId,
      req,
      async (uow) => {
        if (!(await uow.getAccount(req.accountId))) throw new NotFoundError("account", req.accountId);
        const plan = await uow.getPlan(req.planId);
        if (!plan) throw new NotFoundError("plan", req.planId);
        const spec = plan.spec;
        const startsAt = req.startsAt ?? now;
        const endsAt = req.endsAt ?? (spec.subscriptionLength ? startsAt + parseDuration(spec.subscriptionLength) : undefined);
        if (endsAt !== undefined && endsAt <= startsAt) throw new InvalidArgumentError("ends_at", "must be after starts_at");
        validateBlocks(spec, req.accessBlocks);
        for (const [limit, pkg] of Object.entries(req.addOns)) {
          const l = spec.limits.find((x) => x.name === limit);
          if (!l?.addOns?.some((p) => p.id === pkg)) throw new InvalidArgumentError(`add_ons[${limit}]`, `plan ${spec.id} has no add-on ${JSON.stringify(pkg)} for limit ${JSON.stringify(limit)}`);
        }
        const s: SubscriptionRecord = {
          id: newId("sub"),
          accountId: req.accountId,
          planId: req.planId,
          startsAt: new Date(startsAt),
          endsAt: endsAt !== undefined ? new Date(endsAt) : null,
          accessBlocks: req.accessBlocks,
          addOns: req.addOns,
          status: "active",
          createdAt: new Date(now),
        };
        await uow.insertSubscription(s);
        // Add-ons chosen at subscription time are purchases too: the current cycle is booked (claimed once, see
        // add-on-billing.ts) for what is left of it; later cycles are booked by the renewal pass. A subscription that
        // starts in the future is booked when its first cycle starts.
        if (Object.keys(req.addOns).length > 0 && startsAt <= now && (endsAt === undefined || endsAt > now)) {
          await uow.claimOnce(ADDON_PERIOD_SCOPE, `${s.id}:${cycleOf(s, now).start}`);
          for (const [limit, pkgId] of Object.entries(req.addOns)) {
            const l = spec.limits.find((x) => x.name === limit)!;
            const pkg = l.addOns!.find((p) => p.id === pkgId)!;
            const monthly = addOnMonthlyPrice(l, pkg);
            const price = prorated(monthly, cycleOf(s, now), now);
            await uow.insertTransaction({
              id: newSortableId("tx"),
              accountId: req.accountId,
              type: "addon_change",
              createdAt: new Date(now),
              externalReference: null,
              description: `add-on bought with subscription ${s.id}: ${pkg.id} (+${pkg.amount} ${l.name}) at ${formatMicros(monthly)} USD per month; ${formatMicros(price)} USD for the rest of this cycle`,
              postings: chargePostings(req.accountId, price),
            });
          }
        }
        await uow.bumpCapacityVersion(req.accountId);
        return s;
      },
      encodeSub,
      decodeSub,
    );
    await this.#d.capacity.afterCommit(sub.accountId).catch(() => {});
    return sub;
  }

  async cancelSubscription(id: string): Promise<SubscriptionRecord> {
    checkId("subscription_id", id);
    const sub = await this.#d.db.transaction(async (uow) => {
      const s = await uow.getSubscription(id);
      if (!s) throw new NotFoundError("subscription", id);
      if (s.status === "cancelled") return s;
      s.status = "cancelled";
      const now = new Date(this.#d.clock.now());
      if (!s.endsAt || s.endsAt > now) s.endsAt = now;
      await uow.saveSubscription(s);
      return s;
    });
    await this.#d.bus.publish(sub.accountId);
    return sub;
  }

  async setAddOn(req: { subscriptionId: string; packageId: string; limit: string; requestId: string }) {
    checkId("subscription_id", req.subscriptionId);
    if (req.packageId && !NAME_RE.test(req.packageId)) throw new InvalidArgumentError("package_id", "is not a package id");
    if (req.limit && !NAME_RE.test(req.limit)) throw new InvalidArgumentError("limit", "is not a limit name");
    const result = await this.#idempotent(
      "set-add-on",
      req.requestId,
      req,
      async (uow) => {
        const sub = await uow.getSubscription(req.subscriptionId);
        if (!sub) throw new NotFoundError("subscription", req.subscriptionId);
        const change = await changeAddOn(uow, sub, req.packageId, req.limit, "", this.#d.clock.now());
        const txId = newSortableId("tx");
        await uow.insertTransaction({
          id: txId,
          accountId: sub.accountId,
          type: "addon_change",
          createdAt: new Date(this.#d.clock.now()),
          externalReference: null,
          description: change.description,
          postings: change.postings,
        });
        await uow.bumpCapacityVersion(sub.accountId);
        return { subscription: change.subscription, transactionId: txId, newLimit: change.newLimit };
      },
      (r) => ({ ...r, subscription: encodeSub(r.subscription), newLimit: String(r.newLimit) }),
      (raw) => {
        const r = raw as { subscription: unknown; transactionId: string; newLimit: string };
        return { subscription: decodeSub(r.subscription), transactionId: r.transactionId, newLimit: BigInt(r.newLimit) };
      },
    );
    await this.#d.capacity.afterCommit(result.subscription.accountId).catch(() => {});
    return result;
  }

  async createApiKey(req: {
    accountId: string;
    subscriptionId: string;
    name: string;
    owner: boolean;
    overageEnabled: boolean;
    subLimits: Record<string, bigint>;
    expiresAt?: number;
    requestId: string;
  }): Promise<{ key: KeyRecord; apiKey: string }> {
    checkId("account_id", req.accountId);
    checkId("subscription_id", req.subscriptionId);
    if (req.name.length > 200 || /[\u0000-\u001f]/.test(req.name)) throw new InvalidArgumentError("name", "at most 200 characters, no control characters");
    for (const [name, v] of Object.entries(req.subLimits)) {
      if (!NAME_RE.test(name)) throw new InvalidArgumentError("sub_limits", `${JSON.stringify(name.slice(0, 64))} is not a limit name`);
      if (v <= 0n || v > MAX_AMOUNT) throw new InvalidArgumentError(`sub_limits[${name}]`, "must be between 1 and 1e15");
    }
    const secret = newSecret();
    let fresh = false;
    const key = await this.#idempotent(
      "create-key",
      req.requestId,
      req,
      async (uow) => {
        const sub = await uow.getSubscription(req.subscriptionId);
        if (!sub || sub.accountId !== req.accountId) throw new NotFoundError("subscription", req.subscriptionId);
        const plan = (await uow.getPlan(sub.planId))!.spec;
        for (const name of Object.keys(req.subLimits)) {
          if (!plan.limits.some((l) => l.name === name && l.kind === "quota" && l.scope !== "key")) {
            throw new InvalidArgumentError(`sub_limits[${name}]`, `plan ${plan.id} has no shared quota limit ${JSON.stringify(name)}`);
          }
        }
        const k: KeyRecord = {
          id: newKeyId(),
          accountId: req.accountId,
          subscriptionId: req.subscriptionId,
          name: req.name,
          secretHash: hashSecret(secret),
          status: "active",
          owner: req.owner,
          overage: req.overageEnabled,
          subLimits: req.subLimits,
          expiresAt: req.expiresAt !== undefined ? new Date(req.expiresAt) : null,
          createdAt: new Date(this.#d.clock.now()),
        };
        await uow.insertKey(k);
        fresh = true;
        return k;
      },
      (k) => ({ ...k, subLimits: Object.fromEntries(Object.entries(k.subLimits).map(([a, b]) => [a, String(b)])), createdAt: k.createdAt.toISOString(), expiresAt: k.expiresAt?.toISOString() ?? null }),
      (raw) => {
        const r = raw as Record<string, unknown>;
        return {
          ...(r as unknown as KeyRecord),
          subLimits: Object.fromEntries(Object.entries(r.subLimits as Record<string, string>).map(([a, b]) => [a, BigInt(b)])),
          createdAt: new Date(r.createdAt as string),
          expiresAt: r.expiresAt ? new Date(r.expiresAt as string) : null,
        };
      },
    );
    // Replicas that looked this key id up before it existed remember it as unknown: tell them.
    if (fresh) await this.#d.bus.publish(key.accountId);
    // The secret exists only in this answer: a retried create returns the key without it.
    return { key, apiKey: fresh ? formatApiKey(key.id, secret) : "" };
  }

  async revokeApiKey(keyId: string): Promise<KeyRecord> {
    checkId("key_id", keyId);
    const key = await this.#d.db.transaction(async (uow) => {
      const k = await uow.getKey(keyId);
      if (!k) throw new NotFoundError("api key", keyId);
      if (k.status !== "revoked") {
        k.status = "revoked";
        await uow.saveKey(k);
      }
      return k;
    });
    await this.#d.bus.publish(key.accountId);
    return key;
  }

  async listApiKeys(accountId: string): Promise<KeyRecord[]> {
    checkId("account_id", accountId);
    if (!(await this.#d.db.read((uow) => uow.getAccount(accountId)))) throw new NotFoundError("account", accountId);
    return this.#d.db.listKeys(accountId);
  }

  async deposit(req: { accountId: string; wallet: string; reference: string; amount?: MoneyParts; provider: string }): Promise<TopUpAnswer & { balance: bigint }> {
    checkId("account_id", req.accountId);
    if (req.wallet !== "prepaid" && req.wallet !== "credit") throw new InvalidArgumentError("wallet", 'must be "prepaid" or "credit"');
    // Validated here under this request's field names (the TopUp it delegates to calls them external.*).
    if (!req.reference) throw new InvalidArgumentError("payment.reference", "is required");
    if (!PAYMENT_REFERENCE_RE.test(req.reference)) throw new InvalidArgumentError("payment.reference", `must be 1-${PAYMENT_REFERENCE_MAX} printable ASCII characters`);
    if (req.provider && !/^[a-z0-9_.-]{1,64}$/.test(req.provider)) throw new InvalidArgumentError("payment.provider", "must be 1-64 characters of a-z 0-9 _ . -");
    moneyToMicros("payment.amount", req.amount);
    const answer = await this.#d.quota.topUp(
      { kind: "admin" },
      {
        apiKey: "",
        accountId: req.accountId,
        idempotencyKey: `deposit:${createHash("sha256").update(req.reference).digest("hex").slice(0, 40)}`,
        subscriptionId: "",
        target: { case: req.wallet === "prepaid" ? "wallet" : "credit", ...(req.amount ? { amount: req.amount } : {}) },
        funding: { case: "external", reference: req.reference, provider: req.provider, ...(req.amount ? { amount: req.amount } : {}) },
      },
      { referenceField: "payment.reference" },
    );
    return { ...answer, balance: req.wallet === "prepaid" ? answer.newBalanceMicros : answer.creditBalanceMicros };
  }

  async adjust(req: {
    accountId: string;
    reason: string;
    requestId: string;
    target:
      | { case: "quota"; subscriptionId: string; limit: string; product: string; units: bigint; validUntil?: number; priority: number }
      | { case: "wallet"; wallet: string; amount?: MoneyParts }
      | { case: undefined };
  }): Promise<{ transactionId: string; grant?: GrantRecord; balance?: bigint }> {
    checkId("account_id", req.accountId);
    if (!req.reason || req.reason.length > 500 || req.reason.includes("\u0000")) throw new InvalidArgumentError("reason", "is required, at most 500 characters");
    if (!req.requestId) throw new InvalidArgumentError("request_id", "is required");
    const t = req.target;
    if (t.case === undefined) throw new InvalidArgumentError("target", "is required (quota or wallet)");
    const now = this.#d.clock.now();
    const result = await this.#idempotent(
      `adjust:${req.accountId}`,
      req.requestId,
      req,
      async (uow) => {
        if (!(await uow.getAccount(req.accountId))) throw new NotFoundError("account", req.accountId);
        const txId = newSortableId("tx");
        const tx: TransactionRecord = { id: txId, accountId: req.accountId, type: "adjustment", createdAt: new Date(now), externalReference: null, description: req.reason, postings: [] };
        const out: { transactionId: string; grant?: GrantRecord; balance?: bigint } = { transactionId: txId };
        if (t.case === "quota") {
          checkId("subscription_id", t.subscriptionId, "quota.subscription_id");
          // Grants only add: a negative grant would lower the total without lowering what remains to be spent.
          if (t.units <= 0n || t.units > MAX_AMOUNT) throw new InvalidArgumentError("quota.units", "must be between 1 and 1e15");
          if (t.product && !NAME_RE.test(t.product)) throw new InvalidArgumentError("quota.product", "is not a product name");
          const sub = await uow.getSubscription(t.subscriptionId);
          if (!sub || sub.accountId !== req.accountId) throw new NotFoundError("subscription", t.subscriptionId);
          const plan = (await uow.getPlan(sub.planId))!.spec;
          if (!plan.limits.some((l) => l.name === t.limit && l.kind === "quota" && l.scope !== "key")) throw new InvalidArgumentError("quota.limit", `plan ${plan.id} has no shared quota limit ${JSON.stringify(t.limit)}`);
          if (t.product && plan.products?.length && !plan.products.includes(t.product)) throw new InvalidArgumentError("quota.product", `plan ${plan.id} does not include product ${JSON.stringify(t.product)}`);
          if (t.validUntil !== undefined && t.validUntil <= now) throw new InvalidArgumentError("quota.valid_until", "must be in the future");
          const g: GrantRecord = {
            id: newId("gr"),
            accountId: req.accountId,
            subscriptionId: sub.id,
            limitName: t.limit,
            product: t.product,
            amount: t.units,
            priority: t.priority,
            validFrom: new Date(now),
            validUntil: new Date(t.validUntil ?? cycleOf(sub, now).end),
            source: "adjustment",
            transactionId: txId,
            createdAt: new Date(now),
          };
          await uow.insertGrant(g);
          tx.description = `${req.reason} (${t.units} ${t.limit})`;
          out.grant = g;
        } else {
          if (t.wallet !== "prepaid" && t.wallet !== "credit") throw new InvalidArgumentError("wallet.wallet", 'must be "prepaid" or "credit"');
          const amount = moneyToMicros("wallet.amount", t.amount, { allowNegative: true });
          if (amount === 0n) throw new InvalidArgumentError("wallet.amount", "must be non-zero");
          const w = await uow.lockWallet(req.accountId, t.wallet as WalletKind);
          if (w.balance + amount < 0n) throw new FailedPreconditionError("INSUFFICIENT_BALANCE", "the adjustment would make the balance negative");
          w.balance += amount;
          if (t.wallet === "credit") w.totalDeposited += amount;
          await uow.saveWallet(w);
          tx.postings.push({ ledgerAccount: `wallet:${req.accountId}:${t.wallet}`, currency: "USD", amount }, { ledgerAccount: "adjustments", currency: "USD", amount: -amount });
          out.balance = w.balance;
        }
        await uow.insertTransaction(tx);
        await uow.bumpCapacityVersion(req.accountId);
        return out;
      },
      (r) => JSON.parse(JSON.stringify(r, (_k, v) => (typeof v === "bigint" ? `${v}` : v))),
      (raw) => {
        const r = raw as { transactionId: string; balance?: string; grant?: Record<string, unknown> };
        const out: { transactionId: string; grant?: GrantRecord; balance?: bigint } = { transactionId: r.transactionId };
        if (r.balance !== undefined) out.balance = BigInt(r.balance);
        if (r.grant) out.grant = { ...(r.grant as unknown as GrantRecord), amount: BigInt(r.grant.amount as string), validFrom: new Date(r.grant.validFrom as string), validUntil: r.grant.validUntil ? new Date(r.grant.validUntil as string) : null, createdAt: new Date(r.grant.createdAt as string) };
        return out;
      },
    );
    await this.#d.capacity.afterCommit(req.accountId).catch(() => {});
    return result;
  }

  async listLedger(req: { accountId: string; pageSize: number; pageToken: string }) {
    if (req.accountId) {
      checkId("account_id", req.accountId);
      if (!(await this.#d.db.read((uow) => uow.getAccount(req.accountId)))) throw new NotFoundError("account", req.accountId);
    }
    const size = req.pageSize === 0 ? 100 : req.pageSize;
    if (size < 1 || size > 500) throw new InvalidArgumentError("page_size", "must be between 1 and 500");
    let before: { createdAt: Date; id: string } | undefined;
    if (req.pageToken) {
      const m = /^(\d{1,15})~(tx_[0-9a-z]{26})$/.exec(Buffer.from(req.pageToken, "base64url").toString());
      if (!m) throw new InvalidArgumentError("page_token", "is not a token from a previous page");
      before = { createdAt: new Date(Number(m[1])), id: m[2]! };
    }
    const txs = await this.#d.db.listTransactions({ ...(req.accountId ? { accountId: req.accountId } : {}), limit: size + 1, ...(before ? { before } : {}) });
    const page = txs.slice(0, size);
    const last = page[page.length - 1];
    return {
      transactions: page,
      nextPageToken: txs.length > size && last ? Buffer.from(`${last.createdAt.getTime()}~${last.id}`).toString("base64url") : "",
    };
  }
}

function validateBlocks(spec: PlanSpec, blocks: string[]): void {
  if (!spec.accessBlocks) {
    if (blocks.length > 0) throw new InvalidArgumentError("access_blocks", `plan ${spec.id} has no access blocks`);
    return;
  }
  const known = Object.keys(spec.accessBlocks.blocks);
  if (new Set(blocks).size !== blocks.length) throw new InvalidArgumentError("access_blocks", "lists a block twice");
  if (blocks.length < spec.accessBlocks.min || blocks.length > spec.accessBlocks.max) {
    throw new InvalidArgumentError("access_blocks", `must reserve ${spec.accessBlocks.min} to ${spec.accessBlocks.max} blocks of ${known.join(", ")}`);
  }
  for (const b of blocks) if (!known.includes(b)) throw new InvalidArgumentError("access_blocks", `unknown block ${JSON.stringify(b)}; blocks: ${known.join(", ")}`);
}

function encodeSub(s: SubscriptionRecord): unknown {
  return { ...s, startsAt: s.startsAt.toISOString(), endsAt: s.endsAt?.toISOString() ?? null, createdAt: s.createdAt.toISOString() };
}

function decodeSub(raw: unknown): SubscriptionRecord {
  const r = raw as Record<string, unknown>;
  return {
    ...(r as unknown as SubscriptionRecord),
    startsAt: new Date(r.startsAt as string),
    endsAt: r.endsAt ? new Date(r.endsAt as string) : null,
    createdAt: new Date(r.createdAt as string),
  };
}
