/**
 * TopUp: buy quota for the current cycle (from the wallet at the plan's rate, or paid externally), deposit money
 * into the prepaid or credit wallet (external payment), or buy/change/remove an add-on. Debit, credit and ledger
 * rows commit in one Postgres transaction or not at all; the answer is given only after the commit, and Redis
 * capacity follows (the reconciler repairs it if that step is lost). Idempotent on the idempotency key, and an
 * external payment reference is credited once only.
 */
import { changeAddOn } from "./add-ons.ts";
import { DuplicateKeyError, FailedPreconditionError, InvalidArgumentError, PermissionDeniedError, QuotaError } from "./errors.ts";
import { newId, newSortableId } from "./ids.ts";
import { resolveKey, type Caller } from "./key-auth.ts";
import { capacityOf, cycleOf } from "./limits.ts";
import { MAX_AMOUNT, formatMicros, moneyToMicros, parseDecimalMicros, type MoneyParts } from "./money.ts";
import type { AccountConfig, GrantRecord, IdempotencyRecord, KeyRecord, SubscriptionRecord, TransactionRecord, UnitOfWork, WalletKind } from "./ports.ts";
import type { QuotaDeps } from "./quota-deps.ts";
import { ACCOUNT_ID_RE, NAME_RE, PAYMENT_REFERENCE_MAX, PAYMENT_REFERENCE_RE, REQUEST_ID_RE, SUBSCRIPTION_ID_RE, hashRequest } from "./validation.ts";
import { grantOut, type GrantOut } from "./views.ts";

export interface QuotaLineIn {
  product: string;
  limit: string;
  units: bigint;
  amount?: MoneyParts;
}

export interface TopUpRequest {
  apiKey: string;
  accountId: string;
  idempotencyKey: string;
  subscriptionId: string;
  target:
    | { case: "quota"; lines: QuotaLineIn[] }
    | { case: "wallet"; amount?: MoneyParts }
    | { case: "credit"; amount?: MoneyParts }
    | { case: "addOn"; packageId: string; limit: string }
    | { case: undefined };
  funding:
    | { case: "fromWallet"; maxAmount?: MoneyParts }
    | { case: "external"; reference: string; amount?: MoneyParts; provider: string }
    | { case: undefined };
}

export interface TopUpAnswer {
  transactionId: string;
  newLimit: bigint;
  newBalanceMicros: bigint;
  creditBalanceMicros: bigint;
  grants: GrantOut[];
  replayed: boolean;
}

export interface TopUpOptions {
  /** The request field that carries the payment reference, for error messages (admin Deposit: payment.reference). */
  referenceField?: string;
}

export async function topUp(d: QuotaDeps, caller: Caller, req: TopUpRequest, options: TopUpOptions = {}): Promise<TopUpAnswer> {
  if (!req.idempotencyKey) throw new InvalidArgumentError("idempotency_key", "is required");
  if (!REQUEST_ID_RE.test(req.idempotencyKey)) throw new InvalidArgumentError("idempotency_key", "must be 1-128 characters of A-Z a-z 0-9 _ . : ~ -");
  if (req.target.case === undefined) throw new InvalidArgumentError("target", "is required (quota, wallet, credit or add_on)");
  if (req.subscriptionId && !SUBSCRIPTION_ID_RE.test(req.subscriptionId)) throw new InvalidArgumentError("subscription_id", "is not a subscription id");
  if (req.target.case === "addOn") {
    if (req.target.packageId && !NAME_RE.test(req.target.packageId)) throw new InvalidArgumentError("add_on.package_id", "is not a package id");
    if (req.target.limit && !NAME_RE.test(req.target.limit)) throw new InvalidArgumentError("add_on.limit", "is not a limit name");
  }
  if (req.funding.case === "external") externalPayment(req.funding);
  if (req.target.case === "addOn" && req.funding.case !== undefined) throw new InvalidArgumentError("funding", "add-ons are invoiced monthly: give no funding");
  if (req.target.case === "quota") {
    req.target.lines.forEach((l, i) => {
      if (l.limit && !NAME_RE.test(l.limit)) throw new InvalidArgumentError(`quota.lines[${i}].limit`, "is not a limit name");
    });
  }

  let accountId: string;
  let key: KeyRecord | undefined;
  if (req.apiKey) {
    if (req.accountId) throw new InvalidArgumentError("account_id", "give either api_key or account_id, not both");
    const { ctx, denial } = await resolveKey(d.keys, req.apiKey, "");
    if (!ctx || denial) throw new PermissionDeniedError(`api key is not valid (${denial ?? "KEY_INVALID"})`);
    key = ctx.key;
    accountId = ctx.key.accountId;
  } else {
    if (caller.kind === "browser") throw new PermissionDeniedError("browser callers must present their api_key");
    if (!req.accountId) throw new InvalidArgumentError("account_id", "is required (or api_key)");
    if (!ACCOUNT_ID_RE.test(req.accountId)) throw new InvalidArgumentError("account_id", "is not an account id");
    accountId = req.accountId;
  }
  if (caller.kind === "browser" && !(req.target.case === "quota" && req.funding.case === "fromWallet")) {
    throw new PermissionDeniedError("browser callers may only buy quota from the wallet");
  }
  if (req.target.case === "addOn" && key && !key.owner) {
    throw new PermissionDeniedError("only the account owner may buy or change add-ons");
  }

  const requestHash = hashRequest({ ...req, apiKey: undefined });
  const scope = `topup:${accountId}`;
  const payment = req.funding.case === "external" ? { reference: req.funding.reference, hash: paymentHash(accountId, key, req) } : undefined;
  const referenceField = options.referenceField ?? "external.reference";
  // A repeat of a TopUp still running in this process waits for it (holding no connection), then looks its result up.
  // When the first one committed the same request, its answer is the answer (no second round trip to Postgres).
  const flight = `${scope}\u0000${req.idempotencyKey}`;
  for (let earlier = d.topUpsInFlight.get(flight); earlier; earlier = d.topUpsInFlight.get(flight)) {
    const first = (await earlier) as { requestHash: string; answer: TopUpAnswer } | undefined;
    if (first && first.requestHash === requestHash) return { ...first.answer, replayed: true };
  }
  const run = commitTopUp(d, req, { accountId, key, scope, requestHash, payment, referenceField });
  // Never rejects (a failed first attempt is not an answer for its repeats: they run themselves), so a first attempt
  // without waiters cannot leave an unhandled rejection behind.
  d.topUpsInFlight.set(flight, run.then((answer) => ({ requestHash, answer }), () => undefined));
  try {
    return await run;
  } finally {
    d.topUpsInFlight.delete(flight);
  }
}

async function commitTopUp(
  d: QuotaDeps,
  req: TopUpRequest,
  { accountId, key, scope, requestHash, payment, referenceField }: { accountId: string; key: KeyRecord | undefined; scope: string; requestHash: string; payment: { reference: string; hash: string } | undefined; referenceField: string },
): Promise<TopUpAnswer> {
  const now = d.clock.now();
  let answer: TopUpAnswer;
  try {
    answer = await d.db.transaction(async (uow) => {
      const account = await uow.getAccount(accountId);
      if (!account) throw new QuotaError("NOT_FOUND", "ACCOUNT_NOT_FOUND", `account ${JSON.stringify(accountId)} not found`);
      // A payment reference first: it is credited once, and only a repeat of the same payment replays it.
      if (payment) {
        const prior = await uow.getIdempotency("payment", payment.reference);
        if (prior) return replayPayment(prior.response, accountId, payment.hash, referenceField);
      }
      const earlier = await uow.getIdempotency(scope, req.idempotencyKey);
      if (earlier) return replayKey(earlier, requestHash);
      // Claim the key (and the reference) before any work: a concurrent repeat waits here for this transaction and
      // then answers with its result, instead of racing it for the wallet (issue 7, item 2).
      await uow.claimIdempotency({ scope, key: req.idempotencyKey, requestHash }, d.idempotencyWaitMs);
      if (payment) await uow.claimIdempotency({ scope: "payment", key: payment.reference, requestHash: payment.hash }, d.idempotencyWaitMs);
      const result = await applyTopUp(d, uow, accountId, key, req, now);
      await uow.completeIdempotency({ scope, key: req.idempotencyKey, requestHash, response: encodeTopUp(result) });
      if (payment) {
        // The payment record names its account and what it paid for: a reference can never be replayed to, or
        // credited by, another account, nor replayed for another amount or target.
        await uow.completeIdempotency({ scope: "payment", key: payment.reference, requestHash: payment.hash, response: { ...(encodeTopUp(result) as object), accountId, paymentHash: payment.hash } });
      }
      await uow.bumpCapacityVersion(accountId);
      return result;
    });
  } catch (e) {
    if (e instanceof DuplicateKeyError) {
      // A concurrent request with the same idempotency key or payment reference committed first: answer with its
      // result (and apply nothing).
      const [prior, priorPayment] = await d.db.read(async (uow) => [
        await uow.getIdempotency(scope, req.idempotencyKey),
        payment ? await uow.getIdempotency("payment", payment.reference) : null,
      ] as const);
      if (priorPayment && payment) return replayPayment(priorPayment.response, accountId, payment.hash, referenceField);
      if (prior) return replayKey(prior, requestHash);
    }
    throw e;
  }
  if (!answer.replayed) {
    try {
      await d.capacity.afterCommit(accountId);
    } catch {
      // Committed in Postgres; the reconciler brings Redis in line (capacity_version > capacity_synced).
    }
  }
  return answer;
}

async function applyTopUp(d: QuotaDeps, uow: UnitOfWork, accountId: string, key: KeyRecord | undefined, req: TopUpRequest, now: number): Promise<TopUpAnswer> {
  const txId = newSortableId("tx");
  const t = req.target;
  const postings: TransactionRecord["postings"] = [];
  const grants: GrantRecord[] = [];
  let type: TransactionRecord["type"] = "deposit";
  let description = "";
  let newLimit = 0n;
  const funding = req.funding;
  const externalAmount = funding.case === "external" ? externalPayment(funding) : 0n;

  const debitPrepaid = async (cost: bigint) => {
    if (funding.case === "fromWallet" && funding.maxAmount) {
      const max = moneyToMicros("from_wallet.max_amount", funding.maxAmount);
      if (cost > max) throw new FailedPreconditionError("PRICE_EXCEEDS_MAXIMUM", `price ${formatMicros(cost)} USD exceeds max_amount ${formatMicros(max)} USD`);
    }
    const w = await uow.lockWallet(accountId, "prepaid");
    if (w.balance < cost) {
      throw new FailedPreconditionError("INSUFFICIENT_BALANCE", `insufficient wallet balance: ${formatMicros(w.balance)} USD available, ${formatMicros(cost)} USD needed`);
    }
    w.balance -= cost;
    await uow.saveWallet(w);
    postings.push({ ledgerAccount: `wallet:${accountId}:prepaid`, currency: "USD", amount: -cost });
  };

  if (t.case === "quota") {
    type = "quota_purchase";
    if (t.lines.length === 0) throw new InvalidArgumentError("quota.lines", "needs at least one line");
    if (t.lines.length > 50) throw new InvalidArgumentError("quota.lines", "at most 50 lines");
    const sub = await subscriptionFor(d, uow, accountId, key, req.subscriptionId);
    const plan = (await uow.getPlan(sub.planId))!.spec;
    if (!plan.topUp) throw new FailedPreconditionError("TOPUP_NOT_OFFERED", `plan ${plan.id} does not offer quota top-ups`);
    const cycle = cycleOf(sub, now);
    let total = 0n;
    const lines: string[] = [];
    t.lines.forEach((line, i) => {
      const f = `quota.lines[${i}]`;
      const limitName = line.limit || plan.topUp!.limit;
      const spec = plan.limits.find((l) => l.name === limitName && l.kind === "quota" && l.scope !== "key");
      if (!spec) throw new InvalidArgumentError(`${f}.limit`, `plan ${plan.id} has no quota limit ${JSON.stringify(limitName)}`);
      if (line.product && !NAME_RE.test(line.product)) throw new InvalidArgumentError(`${f}.product`, "must be 1-63 characters of a-z 0-9 _ . -");
      if (line.product && plan.products?.length && !plan.products.includes(line.product)) {
        throw new InvalidArgumentError(`${f}.product`, `plan ${plan.id} does not include product ${JSON.stringify(line.product)}`);
      }
      const price = plan.topUp!.price;
      let units = line.units;
      let cost = 0n;
      if (line.amount && units !== 0n) throw new InvalidArgumentError(f, "give either units or amount, not both");
      if (line.amount) {
        cost = moneyToMicros(`${f}.amount`, line.amount);
        const perMicros = parseDecimalMicros("price.amount", price.amount);
        if ((cost * price.units) % perMicros !== 0n) throw new InvalidArgumentError(`${f}.amount`, "does not buy a whole number of units at the plan's price");
        units = (cost * price.units) / perMicros;
        if (units > MAX_AMOUNT) throw new InvalidArgumentError(`${f}.amount`, "buys too many units (at most 1e15)");
      } else {
        if (units <= 0n) throw new InvalidArgumentError(`${f}.units`, "must be greater than zero");
        if (units > MAX_AMOUNT) throw new InvalidArgumentError(`${f}.units`, "is too large");
        const perMicros = parseDecimalMicros("price.amount", price.amount);
        if ((units * perMicros) % price.units !== 0n) throw new InvalidArgumentError(`${f}.units`, "does not cost a whole number of micro-dollars");
        cost = (units * perMicros) / price.units;
      }
      if (units % plan.topUp!.increment !== 0n) throw new InvalidArgumentError(`${f}.units`, `must be a multiple of ${plan.topUp!.increment}`);
      total += cost;
      grants.push({
        id: newId("gr"),
        accountId,
        subscriptionId: sub.id,
        limitName,
        product: line.product,
        amount: units,
        priority: plan.topUp!.priority,
        validFrom: new Date(now),
        validUntil: new Date(cycle.end),
        source: "topup",
        transactionId: txId,
        createdAt: new Date(now),
      });
      lines.push(`${units} ${limitName}${line.product ? ` for ${line.product}` : ""}`);
    });
    description = `quota top-up: ${lines.join(", ")} until ${new Date(cycle.end).toISOString()}`;
    if (funding.case === "external") {
      if (externalAmount !== total) throw new InvalidArgumentError("external.amount", `must equal the price ${formatMicros(total)} USD`);
      postings.push({ ledgerAccount: `external:${funding.provider || "payment"}`, currency: "USD", amount: -total });
    } else {
      // Wallet funding is the default for quota purchases.
      await debitPrepaid(total);
    }
    if (total > 0n) postings.push({ ledgerAccount: "revenue:quota", currency: "USD", amount: total });
    for (const g of grants) await uow.insertGrant(g);
    const config = { subscriptions: [sub], plans: new Map([[plan.id, { id: plan.id, name: plan.name, version: 0, spec: plan }]]), grants: await uow.listActiveGrants(sub.id, new Date(now)) };
    newLimit = capacityTotal(config, sub, grants[0]!.limitName, grants[0]!.product, now);
  } else if (t.case === "wallet" || t.case === "credit") {
    const kind: WalletKind = t.case === "wallet" ? "prepaid" : "credit";
    const amount = moneyToMicros(`${t.case}.amount`, t.amount);
    if (funding.case !== "external") throw new InvalidArgumentError("external", `a ${t.case} deposit needs an external payment`);
    if (externalAmount !== amount) throw new InvalidArgumentError("external.amount", `must equal ${t.case}.amount`);
    if (kind === "credit") {
      const min = await minimumDeposit(uow, accountId);
      if (amount < min) throw new InvalidArgumentError("credit.amount", `must be at least ${formatMicros(min)} USD`);
    }
    const w = await uow.lockWallet(accountId, kind);
    w.balance += amount;
    w.totalDeposited += amount;
    await uow.saveWallet(w);
    postings.push({ ledgerAccount: `external:${funding.provider || "payment"}`, currency: "USD", amount: -amount });
    postings.push({ ledgerAccount: `wallet:${accountId}:${kind}`, currency: "USD", amount });
    description = `${kind} deposit of ${formatMicros(amount)} USD`;
    newLimit = kind === "credit" ? w.totalDeposited : 0n;
  } else if (t.case === "addOn") {
    type = "addon_change";
    const sub = await subscriptionFor(d, uow, accountId, key, req.subscriptionId);
    const result = await changeAddOn(uow, sub, t.packageId, t.limit, "add_on", now);
    postings.push(...result.postings);
    description = result.description;
    newLimit = result.newLimit;
  }

  await uow.insertTransaction({
    id: txId,
    accountId,
    type,
    createdAt: new Date(now),
    externalReference: funding.case === "external" ? funding.reference : null,
    description,
    postings,
  });
  // Read, not locked: locking the other wallet here would take two row locks in different orders in different
  // top-ups (deadlock). The wallet this top-up changed is already locked and read back with our own write.
  const prepaid = await uow.getWallet(accountId, "prepaid");
  const credit = await uow.getWallet(accountId, "credit");
  return {
    transactionId: txId,
    newLimit,
    newBalanceMicros: prepaid.balance,
    creditBalanceMicros: credit.balance,
    grants: grants.map(grantOut),
    replayed: false,
  };
}

function externalPayment(f: { reference: string; amount?: MoneyParts; provider: string }): bigint {
  if (!f.reference) throw new InvalidArgumentError("external.reference", "is required");
  if (!PAYMENT_REFERENCE_RE.test(f.reference)) throw new InvalidArgumentError("external.reference", `must be 1-${PAYMENT_REFERENCE_MAX} printable ASCII characters`);
  if (f.provider && !/^[a-z0-9_.-]{1,64}$/.test(f.provider)) throw new InvalidArgumentError("external.provider", "must be 1-64 characters of a-z 0-9 _ . -");
  return moneyToMicros("external.amount", f.amount);
}

async function minimumDeposit(uow: UnitOfWork, accountId: string): Promise<bigint> {
  let min = 0n;
  for (const s of await uow.listSubscriptions(accountId)) {
    const plan = await uow.getPlan(s.planId);
    const m = plan?.spec.credit ? parseDecimalMicros("credit.minimumDeposit", plan.spec.credit.minimumDeposit) : 0n;
    if (m > min) min = m;
  }
  return min;
}

async function subscriptionFor(d: QuotaDeps, uow: UnitOfWork, accountId: string, key: KeyRecord | undefined, subscriptionId: string): Promise<SubscriptionRecord> {
  const sub = await findSubscription(uow, accountId, key, subscriptionId);
  const now = d.clock.now();
  if (sub.status === "cancelled" || (sub.endsAt && sub.endsAt.getTime() <= now)) {
    throw new FailedPreconditionError("SUBSCRIPTION_ENDED", `subscription ${sub.id} has ended; nothing was charged`);
  }
  return sub;
}

async function findSubscription(uow: UnitOfWork, accountId: string, key: KeyRecord | undefined, subscriptionId: string): Promise<SubscriptionRecord> {
  if (key) {
    if (subscriptionId && subscriptionId !== key.subscriptionId) throw new PermissionDeniedError("a key may only top up its own subscription");
    return (await uow.getSubscription(key.subscriptionId))!;
  }
  if (subscriptionId) {
    const s = await uow.getSubscription(subscriptionId);
    if (!s || s.accountId !== accountId) throw new QuotaError("NOT_FOUND", "SUBSCRIPTION_NOT_FOUND", `subscription ${JSON.stringify(subscriptionId)} not found for this account`);
    return s;
  }
  const active = (await uow.listSubscriptions(accountId)).filter((s) => s.status === "active");
  if (active.length !== 1) throw new InvalidArgumentError("subscription_id", `is required: the account has ${active.length} active subscriptions`);
  return active[0]!;
}

function capacityTotal(config: Pick<AccountConfig, "subscriptions" | "plans" | "grants">, sub: SubscriptionRecord, limitName: string, product: string, now: number): bigint {
  const entries = capacityOf({ ...config, wallets: [] });
  const entry = entries.find((e) => e.limitId === `s:${sub.id}:${limitName}` || e.limitId === `a:${limitName}`);
  if (!entry) return 0n;
  let total = entry.base;
  for (const g of entry.grants) {
    if (g.validFrom <= now && (g.validUntil === undefined || now < g.validUntil) && (g.product === "" || g.product === product)) total += g.amount;
  }
  return total;
}

/** What a payment paid for: the account, the target (kind, amount or lines, subscription) and the amount paid. */
function paymentHash(accountId: string, key: KeyRecord | undefined, req: TopUpRequest): string {
  const f = req.funding as { amount?: MoneyParts };
  return hashRequest({ accountId, subscriptionId: req.subscriptionId || key?.subscriptionId || "", target: req.target, amount: f.amount ? `${moneyToMicros("external.amount", f.amount)}` : "" });
}

/**
 * A payment reference seen before: the first answer for the same payment; ALREADY_EXISTS for another account
 * (PAYMENT_REFERENCE_USED) or another amount or target (PAYMENT_REFERENCE_MISMATCH). Nothing is applied.
 */
function replayPayment(raw: unknown, accountId: string, hash: string, field: string): TopUpAnswer {
  const r = raw as { accountId?: string; paymentHash?: string; pending?: boolean };
  if (r.accountId !== accountId) {
    throw new QuotaError("ALREADY_EXISTS", "PAYMENT_REFERENCE_USED", `${field}: was already credited to another account`);
  }
  // Records written before payment hashes were stored carry none: they match on the account alone.
  if (r.paymentHash !== undefined && r.paymentHash !== hash) {
    throw new QuotaError("ALREADY_EXISTS", "PAYMENT_REFERENCE_MISMATCH", `${field}: was already credited for a different amount or target; nothing was changed`);
  }
  return { ...decodeTopUp(raw), replayed: true };
}

/** An idempotency key seen before: the first answer for the same request, INVALID_ARGUMENT for another one. */
function replayKey(prior: IdempotencyRecord, requestHash: string): TopUpAnswer {
  if (prior.requestHash !== requestHash) throw new InvalidArgumentError("idempotency_key", "was already used for a different request");
  return { ...decodeTopUp(prior.response), replayed: true };
}

function encodeTopUp(a: TopUpAnswer): unknown {
  return JSON.parse(JSON.stringify(a, (_k, v) => (typeof v === "bigint" ? `${v}` : v)));
}

function decodeTopUp(raw: unknown): TopUpAnswer {
  const r = raw as Record<string, unknown>;
  return {
    transactionId: r.transactionId as string,
    newLimit: BigInt(r.newLimit as string),
    newBalanceMicros: BigInt(r.newBalanceMicros as string),
    creditBalanceMicros: BigInt(r.creditBalanceMicros as string),
    grants: (r.grants as Array<Record<string, unknown>>).map((g) => ({ ...(g as unknown as GrantOut), amount: BigInt(g.amount as string) })),
    replayed: false,
  };
}
