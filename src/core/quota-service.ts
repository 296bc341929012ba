/**
 * The data-plane use cases, written once for every transport: CheckAndReserve, Release, TopUp, GetLimits.
 *
 * CheckAndReserve and Release never touch Postgres on the hot path: the key comes from the KeyCache, the decision
 * from one CounterStore call. Postgres is read only on a cache miss and on first touch of an account whose hot
 * state is absent (restore).
 */
import type { CounterStore, DenyReasonName, LimitState, Mode, ReleaseState, ReserveCommand, ReserveResult } from "./counter-store.ts";
import { CapacitySync } from "./capacity.ts";
import { FailedPreconditionError, InvalidArgumentError, PermissionDeniedError, QuotaError, UnavailableError } from "./errors.ts";
import { buildHeaders } from "./headers.ts";
import { newId, newSortableId, newReservationId, parseApiKey, parseReservationId, secretMatches } from "./ids.ts";
import { KeyCache, type KeyContext } from "./key-cache.ts";
import { activeAddOn, capacityOf, cycleOf, gatesFor, limitsForCall, priceOf, type AppliedLimit, type LimitInfo } from "./limits.ts";
import { ACCOUNT_ID_RE, KEY_ID_RE, METER_RE, METHOD_RE, NAME_RE, REQUEST_ID_RE, SUBSCRIPTION_ID_RE, hashRequest } from "./validation.ts";
import { MAX_AMOUNT, formatMicros, moneyToMicros, parseDecimalMicros, type MoneyParts } from "./money.ts";
import { addOnMonthlyPrice, parseDuration, type PlanSpec } from "./plan.ts";
import type { AccountConfig, ChangeBus, Clock, Database, GrantRecord, KeyRecord, SubscriptionRecord, TransactionRecord, UnitOfWork, WalletKind } from "./ports.ts";

/** Who is calling: a backend with the data-plane token, an operator with the admin token, or a browser. */
export type Caller = { kind: "service" } | { kind: "admin" } | { kind: "browser"; origin: string };

export interface LimitStatusOut extends LimitInfo {
  limit: bigint;
  used: bigint;
  remaining: bigint;
  resetAt?: number;
  overage: bigint;
  overageTotal: bigint;
  exceeded: boolean;
  sources: Array<{ kind: string; id: string; amount: bigint; used: bigint; expiresAt?: number; priority: number; product: string }>;
}

export interface CheckRequest {
  apiKey: string;
  keyId: string;
  product: string;
  method: string;
  cost?: bigint;
  estimatedSpendMicros?: bigint;
  meters: Record<string, bigint>;
  idempotencyId: string;
  reservationTtlMs?: number;
  mode: Mode;
}

export type DenyReason = DenyReasonName | "KEY_INVALID" | "KEY_REVOKED" | "PRODUCT_NOT_ALLOWED" | "UNAVAILABLE";

export interface CheckAnswer {
  decision: "ALLOWED" | "DENIED";
  reason?: DenyReason;
  reservationId: string;
  overage: boolean;
  retryAfterMs?: number;
  limits: LimitStatusOut[];
  headers: Record<string, string>;
  cost: bigint;
  reservedSpendMicros: bigint;
  shadowReason?: DenyReason;
  failOpen: boolean;
  availableAt?: number;
  deniedLimit: string;
  replayed: boolean;
}

export interface ReleaseRequest {
  reservationId: string;
  outcome: "COMMIT" | "CANCEL";
  actualCost?: bigint;
  actualSpendMicros?: bigint;
  actualMeters: Record<string, bigint>;
}

export interface ReleaseAnswer {
  state: ReleaseState;
  chargedCost: bigint;
  refundedCost: bigint;
  chargedSpendMicros: bigint;
  overage: bigint;
  replayed: boolean;
}

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

export interface GrantOut {
  id: string;
  subscriptionId: string;
  limit: string;
  product: string;
  amount: bigint;
  priority: number;
  validFrom: number;
  validUntil?: number;
  source: string;
}

export interface TopUpAnswer {
  transactionId: string;
  newLimit: bigint;
  newBalanceMicros: bigint;
  creditBalanceMicros: bigint;
  grants: GrantOut[];
  replayed: boolean;
}

export interface GetLimitsRequest {
  apiKey: string;
  keyId: string;
  accountId: string;
  product: string;
}

export interface SubscriptionViewOut {
  id: string;
  planId: string;
  planName: string;
  cycleStart: number;
  cycleEnd: number;
  validFrom: number;
  validUntil?: number;
  limits: LimitStatusOut[];
  addOns: Record<string, string>;
  accessBlocks: string[];
  status: string;
}

export interface KeyViewOut {
  id: string;
  name: string;
  subscriptionId: string;
  status: string;
  overageEnabled: boolean;
  owner: boolean;
  subLimits: Record<string, bigint>;
  createdAt: number;
}

export interface GetLimitsAnswer {
  accountId: string;
  keyId: string;
  subscriptions: SubscriptionViewOut[];
  wallets: Array<{ kind: WalletKind; balance: bigint; totalDeposited: bigint }>;
  grants: GrantOut[];
  keys: KeyViewOut[];
  credit: { totalToppedUp: bigint; spent: bigint; remaining: bigint; creditKeys: number };
  asOf: number;
}

export interface QuotaServiceDeps {
  db: Database;
  store: CounterStore;
  clock: Clock;
  bus: ChangeBus;
  keys: KeyCache;
  capacity: CapacitySync;
  /** Marks an account whose usage changed, for the usage flusher. */
  touched?: (accountId: string) => void;
  /** Counter-store deadline: past it the plan's failure mode answers. */
  storeDeadlineMs?: number;
  /** Counts decisions for metrics. */
  onDecision?: (event: { decision: string; reason: string; mode: Mode; failOpen: boolean }) => void;
}


function checkAmount(field: string, v: bigint | undefined, min: bigint): void {
  if (v === undefined) return;
  if (v < min) throw new InvalidArgumentError(field, min === 0n ? "must not be negative" : "must be at least 1");
  if (v > MAX_AMOUNT) throw new InvalidArgumentError(field, "is too large (at most 1e15)");
}

function checkMeters(field: string, meters: Record<string, bigint>): void {
  const names = Object.keys(meters);
  if (names.length > 16) throw new InvalidArgumentError(field, "at most 16 meters");
  for (const name of names) {
    if (!METER_RE.test(name)) throw new InvalidArgumentError(`${field}[${JSON.stringify(name).slice(0, 40)}]`, "meter names are 1-32 characters of a-z 0-9 _");
    checkAmount(`${field}.${name}`, meters[name], 0n);
  }
}

/** Deadline for counter-store calls: a slow store must not turn into a client timeout. */
async function withDeadline<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new UnavailableError(`counter store did not answer within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

export class QuotaService {
  readonly #d: QuotaServiceDeps;
  readonly #deadline: number;

  constructor(deps: QuotaServiceDeps) {
    this.#d = deps;
    this.#deadline = deps.storeDeadlineMs ?? 50;
  }

  // ---------------------------------------------------------------- key resolution

  /** Resolves and authenticates a key; returns a denial reason instead of throwing for unknown/revoked keys. */
  async #resolveKey(apiKey: string, keyId: string, field = "api_key"): Promise<{ ctx?: KeyContext; denial?: DenyReason }> {
    if (apiKey && keyId) throw new InvalidArgumentError("key_id", "give either api_key or key_id, not both");
    if (!apiKey && !keyId) throw new InvalidArgumentError(field, "is required (or key_id)");
    let id = keyId;
    let secret: string | undefined;
    if (apiKey) {
      if (apiKey.length > 200) return { denial: "KEY_INVALID" };
      const parsed = parseApiKey(apiKey);
      if (!parsed) return { denial: "KEY_INVALID" };
      id = parsed.keyId;
      secret = parsed.secret;
    } else if (!KEY_ID_RE.test(keyId)) {
      throw new InvalidArgumentError("key_id", "is not a key id (16 characters of a-z 2-7)");
    }
    let ctx: KeyContext | null;
    try {
      ctx = await this.#d.keys.get(id);
    } catch (e) {
      throw new UnavailableError("key store unreachable", { cause: e });
    }
    if (!ctx) return { denial: "KEY_INVALID" };
    if (secret !== undefined && !secretMatches(secret, ctx.key.secretHash)) return { denial: "KEY_INVALID" };
    if (ctx.key.status === "revoked") return { ctx, denial: "KEY_REVOKED" };
    return { ctx };
  }

  // ---------------------------------------------------------------- CheckAndReserve

  async checkAndReserve(req: CheckRequest): Promise<CheckAnswer> {
    if (!req.product) throw new InvalidArgumentError("product", "is required");
    if (!NAME_RE.test(req.product)) throw new InvalidArgumentError("product", "must be 1-63 characters of a-z 0-9 _ . -");
    if (!req.method) throw new InvalidArgumentError("method", "is required");
    if (!METHOD_RE.test(req.method)) throw new InvalidArgumentError("method", "must be 1-128 characters of A-Z a-z 0-9 _ . : / -");
    checkAmount("cost", req.cost, 1n);
    checkAmount("estimated_spend_micros", req.estimatedSpendMicros, 0n);
    checkMeters("meters", req.meters);
    if (req.idempotencyId && !REQUEST_ID_RE.test(req.idempotencyId)) throw new InvalidArgumentError("idempotency_id", "must be 1-128 characters of A-Z a-z 0-9 _ . : ~ -");
    const ttl = req.reservationTtlMs;
    if (ttl !== undefined && (ttl < 1000 || ttl > 3_600_000)) throw new InvalidArgumentError("reservation_ttl", "must be between 1s and 1h");

    const { ctx, denial } = await this.#resolveKey(req.apiKey, req.keyId);
    const empty: CheckAnswer = {
      decision: "DENIED",
      reservationId: "",
      overage: false,
      limits: [],
      headers: {},
      cost: 0n,
      reservedSpendMicros: 0n,
      failOpen: false,
      deniedLimit: "",
      replayed: false,
    };
    if (denial || !ctx) return this.#report({ ...empty, reason: denial ?? "KEY_INVALID" }, req.mode);
    const plan = ctx.plan.spec;
    if (plan.products && plan.products.length > 0 && !plan.products.includes(req.product)) {
      return this.#report({ ...empty, reason: "PRODUCT_NOT_ALLOWED" }, req.mode);
    }

    const units = req.cost ?? BigInt(plan.methods.costs[req.method] ?? plan.methods.default);
    const spend = req.estimatedSpendMicros ?? priceOf(plan, req.meters, 1n);
    if (spend > MAX_AMOUNT) throw new InvalidArgumentError("meters", "the priced spend of these meters is too large (at most 1e15 micro-USD)");
    const now = this.#d.clock.now();
    const applied = limitsForCall(plan, ctx.subscription, ctx.key, req.product, { units, spend, meters: req.meters }, now);
    const accountId = ctx.key.accountId;
    const cmd = {
      accountId,
      reservationId: newReservationId(accountId, ctx.key.id),
      mode: req.mode,
      ttlMs: ttl ?? parseDuration(plan.reservation.ttl),
      product: req.product,
      expiryPolicy: plan.reservation.onExpiry,
      gates: gatesFor(ctx.subscription, ctx.key),
      limits: applied.map((a) => a.counter),
      ...(req.idempotencyId ? { idempotencyId: `${ctx.key.id}:${req.idempotencyId}` } : {}),
    };

    let result;
    try {
      result = await this.#reserve(cmd, this.#deadline);
    } catch (e) {
      if (e instanceof QuotaError && e.code !== "UNAVAILABLE") throw e;
      // Counter store unreachable or too slow: the plan decides (DESIGN §6). A script runs whole or not at all, but a
      // slow one may still run after the deadline: cancel its reservation, best effort (same connection, so the
      // cancel is applied after it; if Redis is down both are lost together).
      this.#d.store.release({ accountId, reservationId: cmd.reservationId, outcome: "CANCEL", actual: {} }).catch(() => {});
      const open = plan.failureMode === "open";
      return this.#report(
        { ...empty, decision: open ? "ALLOWED" : "DENIED", ...(open ? {} : { reason: "UNAVAILABLE" as const }), failOpen: open, cost: units },
        req.mode,
      );
    }
    if (req.mode !== "CHECK_ONLY" && result.outcome === "ALLOWED") this.#d.touched?.(accountId);

    const limits = applied.map((a, i) => toStatus(a, result.states[i]));
    const deniedLimit = result.deniedLimitId ? (applied.find((a) => a.counter.id === result.deniedLimitId)?.info.name ?? "") : "";
    const answer: CheckAnswer = {
      decision: result.outcome === "ALLOWED" ? "ALLOWED" : "DENIED",
      reservationId: result.reservationId ?? "",
      overage: result.overage,
      limits,
      headers: buildHeaders(limits, {
        now: result.now,
        overageEnabled: ctx.key.overage,
        ...(result.outcome === "DENIED" && result.retryAfterMs !== undefined ? { retryAfterMs: result.retryAfterMs } : {}),
      }),
      cost: units,
      reservedSpendMicros: applied.some((a) => a.info.kind === "BUDGET") ? spend : 0n,
      failOpen: false,
      deniedLimit,
      replayed: result.replayed,
    };
    if (result.reason) answer.reason = result.reason;
    if (result.shadowReason) answer.shadowReason = result.shadowReason;
    if (result.retryAfterMs !== undefined) answer.retryAfterMs = result.retryAfterMs;
    if (result.availableAt !== undefined) answer.availableAt = result.availableAt;
    return this.#report(answer, req.mode);
  }

  #report(a: CheckAnswer, mode: Mode): CheckAnswer {
    if (mode === "SHADOW" && a.decision === "DENIED") {
      // Key problems and outages in SHADOW mode: still allowed, flagged.
      a.shadowReason = a.reason!;
      delete a.reason;
      a.decision = "ALLOWED";
    }
    this.#d.onDecision?.({ decision: a.decision, reason: a.reason ?? a.shadowReason ?? "", mode, failOpen: a.failOpen });
    return a;
  }

  // ---------------------------------------------------------------- Release

  async release(req: ReleaseRequest): Promise<ReleaseAnswer> {
    if (!req.reservationId) throw new InvalidArgumentError("reservation_id", "is required");
    const parsed = parseReservationId(req.reservationId);
    if (!parsed) throw new InvalidArgumentError("reservation_id", "is not a reservation id");
    const { accountId } = parsed;
    checkAmount("actual_cost", req.actualCost, 0n);
    checkAmount("actual_spend_micros", req.actualSpendMicros, 0n);
    checkMeters("actual_meters", req.actualMeters);
    const actual: Record<string, bigint> = { ...req.actualMeters };
    if (req.actualCost !== undefined) actual.units = req.actualCost;
    if (req.actualSpendMicros !== undefined) actual.spend = req.actualSpendMicros;
    else if (Object.keys(req.actualMeters).length > 0) {
      // Spend follows the actual meters at the key's current plan prices (the key comes from the cache: no
      // Postgres). Meters not named are priced at zero: send every priced meter, or actual_spend_micros.
      let ctx: KeyContext | null;
      try {
        ctx = await this.#d.keys.get(parsed.keyId);
      } catch (e) {
        throw new UnavailableError("cannot price the actual meters: key store unreachable; retry, or give actual_spend_micros", { cause: e });
      }
      if (ctx?.plan.spec.pricing) {
        actual.spend = priceOf(ctx.plan.spec, req.actualMeters, 1n);
        if (actual.spend > MAX_AMOUNT) throw new InvalidArgumentError("actual_meters", "the priced spend of these meters is too large (at most 1e15 micro-USD)");
      }
    }
    let r;
    try {
      r = await withDeadline(
        this.#d.store.release({ accountId, reservationId: req.reservationId, outcome: req.outcome, actual }),
        this.#deadline * 4,
      );
    } catch (e) {
      if (e instanceof QuotaError && e.code !== "UNAVAILABLE") throw e;
      throw new UnavailableError("counter store unreachable; retry the Release (it is idempotent)", { cause: e });
    }
    if (r.outcome === "NOT_FOUND") throw new QuotaError("NOT_FOUND", "RESERVATION_NOT_FOUND", `reservation ${JSON.stringify(req.reservationId)} not found (never made, or settled longer ago than the retention grace past its TTL)`);
    this.#d.touched?.(accountId);
    const reservedUnits = r.reserved.units ?? 0n;
    const chargedUnits = r.charged.units ?? 0n;
    return {
      state: r.state!,
      chargedCost: chargedUnits,
      refundedCost: reservedUnits - chargedUnits,
      chargedSpendMicros: r.charged.spend ?? 0n,
      overage: r.overage,
      replayed: r.outcome === "REPLAYED",
    };
  }

  // ---------------------------------------------------------------- TopUp

  async topUp(caller: Caller, req: TopUpRequest): Promise<TopUpAnswer> {
    if (!req.idempotencyKey) throw new InvalidArgumentError("idempotency_key", "is required");
    if (!REQUEST_ID_RE.test(req.idempotencyKey)) throw new InvalidArgumentError("idempotency_key", "must be 1-128 characters of A-Z a-z 0-9 _ . : ~ -");
    if (req.target.case === undefined) throw new InvalidArgumentError("target", "is required (quota, wallet, credit or add_on)");
    if (req.subscriptionId && !SUBSCRIPTION_ID_RE.test(req.subscriptionId)) throw new InvalidArgumentError("subscription_id", "is not a subscription id");
    if (req.target.case === "addOn") {
      if (req.target.packageId && !NAME_RE.test(req.target.packageId)) throw new InvalidArgumentError("add_on.package_id", "is not a package id");
      if (req.target.limit && !NAME_RE.test(req.target.limit)) throw new InvalidArgumentError("add_on.limit", "is not a limit name");
    }
    if (req.funding.case === "external") this.#externalPayment(req.funding);
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
      const { ctx, denial } = await this.#resolveKey(req.apiKey, "");
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
    const now = this.#d.clock.now();
    let answer: TopUpAnswer;
    try {
      answer = await this.#d.db.transaction(async (uow) => {
        const account = await uow.getAccount(accountId);
        if (!account) throw new QuotaError("NOT_FOUND", "ACCOUNT_NOT_FOUND", `account ${JSON.stringify(accountId)} not found`);
        const earlier = await uow.getIdempotency(scope, req.idempotencyKey);
        if (earlier) {
          if (earlier.requestHash !== requestHash) throw new InvalidArgumentError("idempotency_key", "was already used for a different request");
          return { ...decodeTopUp(earlier.response), replayed: true };
        }
        if (req.funding.case === "external") {
          const prior = await uow.getIdempotency("payment", req.funding.reference);
          if (prior) return replayPayment(prior.response, accountId);
        }
        const result = await this.#applyTopUp(uow, accountId, key, req, now);
        await uow.putIdempotency({ scope, key: req.idempotencyKey, requestHash, response: encodeTopUp(result) });
        if (req.funding.case === "external") {
          // The payment record names its account: a reference can never be replayed to, or credited by, another one.
          await uow.putIdempotency({ scope: "payment", key: req.funding.reference, requestHash, response: { ...(encodeTopUp(result) as object), accountId } });
        }
        await uow.bumpCapacityVersion(accountId);
        return result;
      });
    } catch (e) {
      if (isUniqueViolation(e)) {
        // A concurrent request with the same idempotency key or payment reference committed first: answer with its
        // result (and apply nothing).
        const prior = await this.#d.db.read(async (uow) =>
          (await uow.getIdempotency(scope, req.idempotencyKey)) ??
          (req.funding.case === "external" ? await uow.getIdempotency("payment", req.funding.reference) : null),
        );
        if (prior) {
          if (prior.scope === scope && prior.requestHash !== requestHash) throw new InvalidArgumentError("idempotency_key", "was already used for a different request");
          return prior.scope === "payment" ? replayPayment(prior.response, accountId) : { ...decodeTopUp(prior.response), replayed: true };
        }
      }
      throw mapDbError(e);
    }
    if (!answer.replayed) {
      try {
        await this.#d.capacity.afterCommit(accountId);
      } catch {
        // Committed in Postgres; the reconciler brings Redis in line (capacity_version > capacity_synced).
      }
    }
    return answer;
  }

  async #applyTopUp(uow: UnitOfWork, accountId: string, key: KeyRecord | undefined, req: TopUpRequest, now: number): Promise<TopUpAnswer> {
    const txId = newSortableId("tx");
    const t = req.target;
    const postings: TransactionRecord["postings"] = [];
    const grants: GrantRecord[] = [];
    let type: TransactionRecord["type"] = "deposit";
    let description = "";
    let newLimit = 0n;
    const funding = req.funding;
    const externalAmount = funding.case === "external" ? this.#externalPayment(funding) : 0n;

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
      const sub = await this.#subscriptionFor(uow, accountId, key, req.subscriptionId);
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
        const min = await this.#minimumDeposit(uow, accountId);
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
      const sub = await this.#subscriptionFor(uow, accountId, key, req.subscriptionId);
      const result = await changeAddOn(uow, sub, t.packageId, t.limit, "add_on");
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

  #externalPayment(f: { reference: string; amount?: MoneyParts; provider: string }): bigint {
    if (!f.reference) throw new InvalidArgumentError("external.reference", "is required");
    if (f.reference.length > 256 || !/^[\x21-\x7e]+$/.test(f.reference)) throw new InvalidArgumentError("external.reference", "must be 1-256 printable ASCII characters");
    if (f.provider && !/^[a-z0-9_.-]{1,64}$/.test(f.provider)) throw new InvalidArgumentError("external.provider", "must be 1-64 characters of a-z 0-9 _ . -");
    return moneyToMicros("external.amount", f.amount);
  }

  async #minimumDeposit(uow: UnitOfWork, accountId: string): Promise<bigint> {
    let min = 0n;
    for (const s of await uow.listSubscriptions(accountId)) {
      const plan = await uow.getPlan(s.planId);
      const m = plan?.spec.credit ? parseDecimalMicros("credit.minimumDeposit", plan.spec.credit.minimumDeposit) : 0n;
      if (m > min) min = m;
    }
    return min;
  }

  async #subscriptionFor(uow: UnitOfWork, accountId: string, key: KeyRecord | undefined, subscriptionId: string): Promise<SubscriptionRecord> {
    const sub = await this.#findSubscription(uow, accountId, key, subscriptionId);
    const now = this.#d.clock.now();
    if (sub.status === "cancelled" || (sub.endsAt && sub.endsAt.getTime() <= now)) {
      throw new FailedPreconditionError("SUBSCRIPTION_ENDED", `subscription ${sub.id} has ended; nothing was charged`);
    }
    return sub;
  }

  async #findSubscription(uow: UnitOfWork, accountId: string, key: KeyRecord | undefined, subscriptionId: string): Promise<SubscriptionRecord> {
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


  // ---------------------------------------------------------------- GetLimits

  async getLimits(caller: Caller, req: GetLimitsRequest): Promise<GetLimitsAnswer> {
    if (req.product && !NAME_RE.test(req.product)) throw new InvalidArgumentError("product", "must be 1-63 characters of a-z 0-9 _ . -");
    let key: KeyRecord | undefined;
    let accountId = req.accountId;
    const given = [req.apiKey, req.keyId, req.accountId].filter(Boolean).length;
    if (given !== 1) throw new InvalidArgumentError("api_key", "give exactly one of api_key, key_id, account_id");
    if (caller.kind === "browser" && !req.apiKey) throw new PermissionDeniedError("browser callers must present their api_key");
    if (req.apiKey || req.keyId) {
      const { ctx, denial } = await this.#resolveKey(req.apiKey, req.keyId);
      if (!ctx || denial === "KEY_INVALID") throw new QuotaError("NOT_FOUND", "KEY_NOT_FOUND", "api key not found");
      if (denial === "KEY_REVOKED") throw new PermissionDeniedError("api key revoked");
      key = ctx.key;
      accountId = ctx.key.accountId;
    } else if (!ACCOUNT_ID_RE.test(accountId)) {
      throw new InvalidArgumentError("account_id", "is not an account id");
    }
    const now = this.#d.clock.now();
    let config: AccountConfig | null;
    try {
      config = await this.#d.db.loadAccountConfig(accountId, new Date(now));
    } catch (e) {
      throw new UnavailableError("database unreachable", { cause: e });
    }
    if (!config) throw new QuotaError("NOT_FOUND", "ACCOUNT_NOT_FOUND", `account ${JSON.stringify(accountId)} not found`);

    const subs = key ? config.subscriptions.filter((s) => s.id === key!.subscriptionId) : config.subscriptions;
    const views: SubscriptionViewOut[] = [];
    let spent = 0n;
    let asOf = now;
    for (const sub of subs) {
      const planRec = config.plans.get(sub.planId);
      if (!planRec) continue;
      const applied = limitsForCall(planRec.spec, sub, key, req.product, { units: 0n, spend: 0n, meters: {} }, now, { allProducts: !req.product })
        .map((a) => ({ ...a, counter: { ...a.counter, amount: 0n } }));
      const states = await this.#peek(accountId, applied, req.product);
      asOf = states.now;
      const limits = applied.map((a, i) => explainSources(toStatus(a, states.states[i]), planRec.spec, sub));
      for (const l of limits) if (l.kind === "BUDGET") spent = l.used + l.overage;
      const cycle = cycleOf(sub, now);
      const view: SubscriptionViewOut = {
        id: sub.id,
        planId: sub.planId,
        planName: planRec.name,
        cycleStart: cycle.start,
        cycleEnd: cycle.end,
        validFrom: sub.startsAt.getTime(),
        limits,
        addOns: sub.addOns,
        accessBlocks: sub.accessBlocks,
        status: sub.status === "cancelled" ? "cancelled" : sub.endsAt && sub.endsAt.getTime() <= now ? "ended" : sub.startsAt.getTime() > now ? "scheduled" : "active",
      };
      if (sub.endsAt) view.validUntil = sub.endsAt.getTime();
      views.push(view);
    }
    const credit = config.wallets.find((w) => w.kind === "credit");
    const creditKeys = config.keys.filter((k) => {
      const sub = config!.subscriptions.find((s) => s.id === k.subscriptionId);
      return k.status === "active" && sub && config!.plans.get(sub.planId)?.spec.limits.some((l) => l.kind === "budget");
    }).length;
    const totalToppedUp = credit?.totalDeposited ?? 0n;
    const subIds = new Set(subs.map((s) => s.id));
    return {
      accountId,
      keyId: key?.id ?? "",
      subscriptions: views,
      wallets: (["prepaid", "credit"] as const).map((kind) => {
        const w = config!.wallets.find((x) => x.kind === kind);
        return { kind, balance: w?.balance ?? 0n, totalDeposited: w?.totalDeposited ?? 0n };
      }),
      grants: config.grants.filter((g) => subIds.has(g.subscriptionId)).map(grantOut),
      keys: (key ? [key] : config.keys).map((k) => keyView(k, now)),
      credit: { totalToppedUp, spent, remaining: totalToppedUp > spent ? totalToppedUp - spent : 0n, creditKeys },
      asOf,
    };
  }

  /** One reserve script; on first touch (or after Redis lost the account) restore it from Postgres and go again. */
  async #reserve(cmd: ReserveCommand, deadlineMs: number): Promise<ReserveResult> {
    let r = await withDeadline(this.#d.store.reserve(cmd), deadlineMs);
    if (r.outcome === "NEED_RESTORE") {
      await this.#d.capacity.restore(cmd.accountId);
      r = await withDeadline(this.#d.store.reserve(cmd), deadlineMs);
      if (r.outcome === "NEED_RESTORE") throw new UnavailableError("counter store state could not be restored");
    }
    return r;
  }

  async #peek(accountId: string, applied: AppliedLimit[], product: string) {
    const cmd = {
      accountId,
      reservationId: "peek",
      mode: "CHECK_ONLY" as const,
      ttlMs: 1000,
      product,
      expiryPolicy: "charge" as const,
      gates: [],
      limits: applied.map((a) => a.counter),
    };
    try {
      return await this.#reserve(cmd, this.#deadline * 4);
    } catch (e) {
      if (e instanceof QuotaError && e.code !== "UNAVAILABLE") throw e;
      throw new UnavailableError("counter store unreachable", { cause: e });
    }
  }
}

export function toStatus(a: AppliedLimit, s: LimitState | undefined): LimitStatusOut {
  const out: LimitStatusOut = {
    ...a.info,
    limit: s?.limit ?? 0n,
    used: s?.used ?? 0n,
    remaining: s?.remaining ?? 0n,
    overage: s?.overage ?? 0n,
    overageTotal: s?.overageTotal ?? 0n,
    exceeded: s?.exceeded ?? false,
    sources: (s?.sources ?? []).map((x) => {
      const src: LimitStatusOut["sources"][number] = {
        kind: x.id === "base" ? "plan" : "grant",
        id: x.id,
        amount: x.amount,
        used: x.used,
        priority: x.priority,
        product: x.product,
      };
      if (x.expiresAt !== undefined) src.expiresAt = x.expiresAt;
      return src;
    }),
  };
  if (s?.resetAt !== undefined) out.resetAt = s.resetAt;
  return out;
}

/** Splits the periodic base of a quota into the plan's part and the add-on's part, so every number is explained. */
function explainSources(status: LimitStatusOut, plan: PlanSpec, sub: SubscriptionRecord): LimitStatusOut {
  const spec = plan.limits.find((l) => l.name === status.name);
  const base = status.sources.find((s) => s.id === "base");
  if (!spec || !base) return status;
  if (spec.kind === "budget") {
    base.kind = "credit";
    base.id = "deposits";
    return status;
  }
  const addOn = status.scope === "KEY" ? undefined : activeAddOn(spec, sub);
  base.id = plan.id;
  if (!addOn) return status;
  const planPart = base.amount - addOn.amount;
  const planUsed = base.used < planPart ? base.used : planPart;
  const idx = status.sources.indexOf(base);
  status.sources.splice(idx, 1, { ...base, amount: planPart, used: planUsed }, { ...base, kind: "add_on", id: addOn.id, amount: addOn.amount, used: base.used - planUsed });
  return status;
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

const fieldPath = (parent: string, name: string) => (parent ? `${parent}.${name}` : name);

/** Buys, changes or removes a subscription's add-on; returns the ledger postings (monthly price, invoiced). */
export async function changeAddOn(uow: UnitOfWork, sub: SubscriptionRecord, packageId: string, limitName: string, field: string) {
  const plan = (await uow.getPlan(sub.planId))!.spec;
  const candidates = plan.limits.filter((l) => l.addOns && l.addOns.length > 0);
  const spec = limitName ? candidates.find((l) => l.name === limitName) : candidates.length === 1 ? candidates[0] : undefined;
  if (!spec) {
    throw new InvalidArgumentError(fieldPath(field, "limit"), limitName ? `plan ${plan.id} has no add-ons for limit ${JSON.stringify(limitName)}` : `plan ${plan.id} has ${candidates.length} limits with add-ons; name one`);
  }
  const postings: TransactionRecord["postings"] = [];
  let description: string;
  const previous = sub.addOns[spec.name];
  if (!packageId) {
    if (!previous) throw new FailedPreconditionError("NO_ADD_ON", `no add-on is active on ${spec.name}`);
    delete sub.addOns[spec.name];
    description = `add-on removed: ${previous} from ${spec.name}`;
  } else {
    const pkg = spec.addOns!.find((p) => p.id === packageId);
    if (!pkg) {
      const largest = spec.addOns!.reduce((m, p) => (p.amount > m ? p.amount : m), 0n);
      throw new InvalidArgumentError(fieldPath(field, "package_id"), `unknown add-on package ${JSON.stringify(packageId)} for ${spec.name}; packages: ${spec.addOns!.map((p) => p.id).join(", ")} (largest +${largest})`);
    }
    if (previous === pkg.id) throw new FailedPreconditionError("ADD_ON_ALREADY_ACTIVE", `${pkg.id} is already active on ${spec.name}`);
    const price = addOnMonthlyPrice(spec, pkg);
    sub.addOns = { ...sub.addOns, [spec.name]: pkg.id };
    description = `add-on ${previous ? `changed from ${previous} to` : "bought:"} ${pkg.id} (+${pkg.amount} ${spec.name}) at ${formatMicros(price)} USD per month`;
    if (price > 0n) {
      postings.push({ ledgerAccount: `receivable:${sub.accountId}`, currency: "USD", amount: -price });
      postings.push({ ledgerAccount: "revenue:addons", currency: "USD", amount: price });
    }
  }
  await uow.saveSubscription(sub);
  const addOn = activeAddOn(spec, sub);
  return { postings, description, newLimit: spec.limit! + (addOn?.amount ?? 0n), subscription: sub };
}

function grantOut(g: GrantRecord): GrantOut {
  const out: GrantOut = {
    id: g.id,
    subscriptionId: g.subscriptionId,
    limit: g.limitName,
    product: g.product,
    amount: g.amount,
    priority: g.priority,
    validFrom: g.validFrom.getTime(),
    source: g.source,
  };
  if (g.validUntil) out.validUntil = g.validUntil.getTime();
  return out;
}

export function keyView(k: KeyRecord, now: number): KeyViewOut {
  return {
    id: k.id,
    name: k.name,
    subscriptionId: k.subscriptionId,
    status: k.status === "revoked" ? "revoked" : k.expiresAt && k.expiresAt.getTime() <= now ? "expired" : "active",
    overageEnabled: k.overage,
    owner: k.owner,
    subLimits: k.subLimits,
    createdAt: k.createdAt.getTime(),
  };
}

/** A payment reference seen before: the first answer for the same account, ALREADY_EXISTS for any other. */
function replayPayment(raw: unknown, accountId: string): TopUpAnswer {
  const owner = (raw as { accountId?: string }).accountId;
  if (owner !== accountId) {
    throw new QuotaError("ALREADY_EXISTS", "PAYMENT_REFERENCE_USED", "external.reference was already credited to another account");
  }
  return { ...decodeTopUp(raw), replayed: true };
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

export function isUniqueViolation(e: unknown): boolean {
  const name = (e as { name?: string; constructor?: { name?: string } })?.constructor?.name ?? "";
  return name === "UniqueConstraintViolationException" || /duplicate key|unique constraint/i.test(String((e as Error)?.message ?? ""));
}

/** Database errors that are not ours become UNAVAILABLE (connection) or pass through (typed errors). */
export function mapDbError(e: unknown): unknown {
  if (e instanceof QuotaError) return e;
  const name = (e as { constructor?: { name?: string } })?.constructor?.name ?? "";
  const msg = String((e as Error)?.message ?? "");
  const code = (e as { code?: string })?.code ?? "";
  if (code === "40P01" || code === "40001" || /deadlock detected|could not serialize/i.test(msg)) {
    return new UnavailableError("concurrent update conflict; nothing was applied, retry", { cause: e });
  }
  if (/Connection|ECONNREFUSED|ECONNRESET|terminat|timeout|57P01|08006|08001/i.test(name + msg)) {
    return new UnavailableError("database unreachable; nothing was applied", { cause: e });
  }
  if (name === "CheckConstraintViolationException") {
    return new FailedPreconditionError("INSUFFICIENT_BALANCE", "the wallet balance would become negative");
  }
  return e;
}
