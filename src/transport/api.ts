/**
 * The API surface shared by both adapters: authenticates the caller, translates protobuf messages to core requests
 * and core answers back to messages. No business rule lives here; the adapters only add wire concerns.
 */
import { timingSafeEqual } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { durationMs, timestampDate, timestampFromMs, type Duration, type Timestamp } from "@bufbuild/protobuf/wkt";
import {
  AccountSchema,
  AdjustResponseSchema,
  ApplyPlansResponseSchema,
  CancelSubscriptionResponseSchema,
  CreateAccountResponseSchema,
  CreateApiKeyResponseSchema,
  CreateSubscriptionResponseSchema,
  DepositResponseSchema,
  GetAccountResponseSchema,
  LedgerTransactionSchema,
  ListApiKeysResponseSchema,
  ListLedgerResponseSchema,
  ListPlansResponseSchema,
  PlanSummarySchema,
  RevokeApiKeyResponseSchema,
  SetAddOnResponseSchema,
  SubscriptionSchema,
  type AdjustRequest,
  type AdjustResponse,
  type ApplyPlansRequest,
  type ApplyPlansResponse,
  type CancelSubscriptionRequest,
  type CancelSubscriptionResponse,
  type CreateAccountRequest,
  type CreateAccountResponse,
  type CreateApiKeyRequest,
  type CreateApiKeyResponse,
  type CreateSubscriptionRequest,
  type CreateSubscriptionResponse,
  type DepositRequest,
  type DepositResponse,
  type GetAccountRequest,
  type GetAccountResponse,
  type ListApiKeysRequest,
  type ListApiKeysResponse,
  type ListLedgerRequest,
  type ListLedgerResponse,
  type ListPlansRequest,
  type ListPlansResponse,
  type RevokeApiKeyRequest,
  type RevokeApiKeyResponse,
  type SetAddOnRequest,
  type SetAddOnResponse,
} from "../gen/quota/v1/admin_pb.ts";
import {
  CheckAndReserveResponseSchema,
  GetLimitsResponseSchema,
  GrantSchema,
  KeyViewSchema,
  Outcome,
  ReleaseResponseSchema,
  ReleaseState,
  TopUpResponseSchema,
  type CheckAndReserveRequest,
  type CheckAndReserveResponse,
  type GetLimitsRequest,
  type GetLimitsResponse,
  type ReleaseRequest,
  type ReleaseResponse,
  type TopUpRequest,
  type TopUpResponse,
} from "../gen/quota/v1/quota_pb.ts";
import { Decision, DenyReason, LimitKind, Mode, MoneySchema, Scope, type LimitStatus, type Money } from "../gen/quota/v1/types_pb.ts";
import type { AdminService } from "../core/admin-service.ts";
import { InvalidArgumentError, PermissionDeniedError, UnauthenticatedError } from "../core/errors.ts";
import { microsToMoney } from "../core/money.ts";
import type { GrantRecord, KeyRecord, SubscriptionRecord } from "../core/ports.ts";
import { keyView, type Caller, type GrantOut, type KeyViewOut, type LimitStatusOut, type QuotaService } from "../core/quota-service.ts";

export interface AuthConfig {
  /** Data-plane bearer token; empty = no token needed (sidecar on loopback). */
  serviceToken: string;
  /** Admin bearer token (always required for the admin service). */
  adminToken: string;
  /** Browser origins allowed to call GetLimits and wallet-funded TopUp. */
  allowedOrigins: readonly string[];
}

/** What an adapter knows about a call. */
export interface CallContext {
  /** Lower-case header names. */
  header(name: string): string | undefined;
  /** True when the peer presented a client certificate the TLS layer verified (mTLS). */
  peerVerified: boolean;
}

/** The only QuotaService methods a browser (a request with an allowed Origin) may call. */
export const BROWSER_METHODS: ReadonlySet<string> = new Set(["GetLimits", "TopUp"]);

function tokenMatches(presented: string | undefined, expected: string): boolean {
  if (!presented || !expected) return false;
  const m = /^Bearer\s+(.+)$/i.exec(presented);
  if (!m) return false;
  const a = Buffer.from(m[1]!);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

export function authenticateDataPlane(auth: AuthConfig, method: string, ctx: CallContext): Caller {
  const origin = ctx.header("origin");
  const authz = ctx.header("authorization");
  if (origin !== undefined && !tokenMatches(authz, auth.serviceToken)) {
    if (!auth.allowedOrigins.includes(origin) && !auth.allowedOrigins.includes("*")) throw new PermissionDeniedError(`origin ${origin} is not allowed`);
    if (!BROWSER_METHODS.has(method)) throw new PermissionDeniedError(`browsers may call only GetLimits and TopUp, not ${method}`);
    return { kind: "browser", origin };
  }
  if (ctx.peerVerified) return { kind: "service" };
  if (!auth.serviceToken) return { kind: "service" };
  if (authz === undefined) throw new UnauthenticatedError("missing authorization: Bearer <service token>");
  if (!tokenMatches(authz, auth.serviceToken)) throw new UnauthenticatedError("invalid service token");
  return { kind: "service" };
}

export function authenticateAdmin(auth: AuthConfig, ctx: CallContext): void {
  if (ctx.header("origin") !== undefined) throw new PermissionDeniedError("the admin service is not available to browsers");
  const authz = ctx.header("authorization");
  if (authz === undefined) throw new UnauthenticatedError("missing authorization: Bearer <admin token>");
  if (!tokenMatches(authz, auth.adminToken)) {
    if (tokenMatches(authz, auth.serviceToken)) throw new PermissionDeniedError("the service token cannot call the admin service");
    throw new UnauthenticatedError("invalid admin token");
  }
}

// ------------------------------------------------------------------ conversions

const ts = (ms: number | undefined): Timestamp | undefined => (ms === undefined ? undefined : timestampFromMs(ms));
const dur = (ms: number | undefined): Duration | undefined => {
  if (ms === undefined) return undefined;
  return { $typeName: "google.protobuf.Duration", seconds: BigInt(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1_000_000 };
};
const money = (micros: bigint): Money => create(MoneySchema, microsToMoney(micros));
const SCOPE = { KEY: Scope.KEY, SUBSCRIPTION: Scope.SUBSCRIPTION, ACCOUNT: Scope.ACCOUNT } as const;
const KIND = { RATE: LimitKind.RATE, QUOTA: LimitKind.QUOTA, CONCURRENCY: LimitKind.CONCURRENCY, BUDGET: LimitKind.BUDGET, ACCESS_WINDOW: LimitKind.ACCESS_WINDOW } as const;

function limitStatus(l: LimitStatusOut): LimitStatus {
  return {
    $typeName: "quota.v1.LimitStatus",
    name: l.name,
    scope: SCOPE[l.scope],
    kind: KIND[l.kind],
    unit: l.unit,
    limit: l.limit,
    used: l.used,
    remaining: l.remaining,
    resetsAt: ts(l.resetAt),
    window: dur(l.windowMs),
    overage: l.overage,
    overageTotal: l.overageTotal,
    exceeded: l.exceeded,
    product: l.product,
    sources: l.sources.map((s) => ({
      $typeName: "quota.v1.CapacitySource",
      kind: s.kind,
      id: s.id,
      amount: s.amount,
      used: s.used,
      expiresAt: ts(s.expiresAt),
      priority: s.priority,
      product: s.product,
    })),
  };
}

function reason(r: string | undefined): DenyReason {
  return r ? (DenyReason as Record<string, DenyReason>)[r] ?? DenyReason.DENY_REASON_UNSPECIFIED : DenyReason.DENY_REASON_UNSPECIFIED;
}

function mode(m: Mode): "ENFORCE" | "CHECK_ONLY" | "SHADOW" {
  switch (m) {
    case Mode.MODE_UNSPECIFIED:
    case Mode.ENFORCE:
      return "ENFORCE";
    case Mode.CHECK_ONLY:
      return "CHECK_ONLY";
    case Mode.SHADOW:
      return "SHADOW";
    default:
      throw new InvalidArgumentError("mode", `unknown value ${m}`);
  }
}

function durationField(field: string, d: Duration | undefined): number | undefined {
  if (!d) return undefined;
  // Only a range guard before converting to a number; the core checks the real bounds (1s..1h).
  if (d.seconds < 0n || d.nanos < 0 || d.seconds > 86_400n) throw new InvalidArgumentError(field, "must be between 1s and 1h");
  return durationMs(d);
}

function timestampField(field: string, t: Timestamp | undefined): number | undefined {
  if (!t) return undefined;
  if (t.seconds < 0n || t.seconds > 253_402_300_799n) throw new InvalidArgumentError(field, "is out of range");
  return timestampDate(t).getTime();
}

function meters(m: { [k: string]: bigint }): Record<string, bigint> {
  return Object.fromEntries(Object.entries(m));
}

function grant(g: GrantOut | GrantRecord) {
  const out = "limitName" in g
    ? { id: g.id, subscriptionId: g.subscriptionId, limit: g.limitName, product: g.product, amount: g.amount, priority: g.priority, validFrom: g.validFrom.getTime(), validUntil: g.validUntil?.getTime(), source: g.source }
    : g;
  return create(GrantSchema, { ...out, validFrom: ts(out.validFrom), validUntil: ts(out.validUntil) });
}

function keyMessage(k: KeyViewOut | KeyRecord) {
  // Admin listings: "expired" is judged by this process's clock (the data plane uses the injected one).
  const v = "secretHash" in k ? keyView(k, Date.now()) : k;
  return create(KeyViewSchema, { ...v, createdAt: ts(v.createdAt) });
}

function planSummary(p: { id: string; name: string; version: number; spec: unknown }) {
  return create(PlanSummarySchema, { id: p.id, name: p.name, version: p.version, specJson: JSON.stringify(p.spec, (_k, v) => (typeof v === "bigint" ? Number(v) : v)) });
}

function subscription(s: SubscriptionRecord) {
  return create(SubscriptionSchema, {
    id: s.id,
    accountId: s.accountId,
    planId: s.planId,
    startsAt: ts(s.startsAt.getTime()),
    endsAt: ts(s.endsAt?.getTime()),
    accessBlocks: s.accessBlocks,
    addOns: s.addOns,
    status: s.status,
  });
}

// ------------------------------------------------------------------ the API

export interface Api {
  quota: {
    checkAndReserve(req: CheckAndReserveRequest, ctx: CallContext): Promise<CheckAndReserveResponse>;
    release(req: ReleaseRequest, ctx: CallContext): Promise<ReleaseResponse>;
    topUp(req: TopUpRequest, ctx: CallContext): Promise<TopUpResponse>;
    getLimits(req: GetLimitsRequest, ctx: CallContext): Promise<GetLimitsResponse>;
  };
  admin: {
    createAccount(req: CreateAccountRequest, ctx: CallContext): Promise<CreateAccountResponse>;
    getAccount(req: GetAccountRequest, ctx: CallContext): Promise<GetAccountResponse>;
    applyPlans(req: ApplyPlansRequest, ctx: CallContext): Promise<ApplyPlansResponse>;
    listPlans(req: ListPlansRequest, ctx: CallContext): Promise<ListPlansResponse>;
    createSubscription(req: CreateSubscriptionRequest, ctx: CallContext): Promise<CreateSubscriptionResponse>;
    cancelSubscription(req: CancelSubscriptionRequest, ctx: CallContext): Promise<CancelSubscriptionResponse>;
    setAddOn(req: SetAddOnRequest, ctx: CallContext): Promise<SetAddOnResponse>;
    createApiKey(req: CreateApiKeyRequest, ctx: CallContext): Promise<CreateApiKeyResponse>;
    revokeApiKey(req: RevokeApiKeyRequest, ctx: CallContext): Promise<RevokeApiKeyResponse>;
    listApiKeys(req: ListApiKeysRequest, ctx: CallContext): Promise<ListApiKeysResponse>;
    deposit(req: DepositRequest, ctx: CallContext): Promise<DepositResponse>;
    adjust(req: AdjustRequest, ctx: CallContext): Promise<AdjustResponse>;
    listLedger(req: ListLedgerRequest, ctx: CallContext): Promise<ListLedgerResponse>;
  };
}

export function createApi(deps: { quota: QuotaService; admin: AdminService; auth: AuthConfig; adminLimiter?: (caller: string) => void }): Api {
  const { quota, admin, auth } = deps;
  const asAdmin = (ctx: CallContext) => {
    authenticateAdmin(auth, ctx);
    deps.adminLimiter?.(ctx.header("authorization") ?? "");
  };
  return {
    quota: {
      async checkAndReserve(req, ctx) {
        authenticateDataPlane(auth, "CheckAndReserve", ctx);
        const ttl = durationField("reservation_ttl", req.reservationTtl);
        const a = await quota.checkAndReserve({
          apiKey: req.apiKey,
          keyId: req.keyId,
          product: req.product,
          method: req.method,
          ...(req.cost !== undefined ? { cost: req.cost } : {}),
          ...(req.estimatedSpendMicros !== undefined ? { estimatedSpendMicros: req.estimatedSpendMicros } : {}),
          meters: meters(req.meters),
          idempotencyId: req.idempotencyId,
          ...(ttl !== undefined ? { reservationTtlMs: ttl } : {}),
          mode: mode(req.mode),
        });
        return create(CheckAndReserveResponseSchema, {
          decision: a.decision === "ALLOWED" ? Decision.ALLOWED : Decision.DENIED,
          reason: reason(a.reason),
          reservationId: a.reservationId,
          overage: a.overage,
          retryAfter: dur(a.retryAfterMs),
          limits: a.limits.map(limitStatus),
          headers: a.headers,
          cost: a.cost,
          reservedSpendMicros: a.reservedSpendMicros,
          shadowReason: reason(a.shadowReason),
          failOpen: a.failOpen,
          availableAt: ts(a.availableAt),
          deniedLimit: a.deniedLimit,
          replayed: a.replayed,
        });
      },
      async release(req, ctx) {
        authenticateDataPlane(auth, "Release", ctx);
        let outcome: "COMMIT" | "CANCEL";
        if (req.outcome === Outcome.CANCEL) outcome = "CANCEL";
        else if (req.outcome === Outcome.COMMIT || req.outcome === Outcome.OUTCOME_UNSPECIFIED) outcome = "COMMIT";
        else throw new InvalidArgumentError("outcome", `unknown value ${req.outcome}`);
        const a = await quota.release({
          reservationId: req.reservationId,
          outcome,
          ...(req.actualCost !== undefined ? { actualCost: req.actualCost } : {}),
          ...(req.actualSpendMicros !== undefined ? { actualSpendMicros: req.actualSpendMicros } : {}),
          actualMeters: meters(req.actualMeters),
        });
        return create(ReleaseResponseSchema, {
          state: ReleaseState[a.state],
          chargedCost: a.chargedCost,
          refundedCost: a.refundedCost,
          chargedSpendMicros: a.chargedSpendMicros,
          overage: a.overage,
          replayed: a.replayed,
        });
      },
      async topUp(req, ctx) {
        const caller = authenticateDataPlane(auth, "TopUp", ctx);
        const t = req.target;
        const f = req.funding;
        const a = await quota.topUp(caller, {
          apiKey: req.apiKey,
          accountId: req.accountId,
          idempotencyKey: req.idempotencyKey,
          subscriptionId: req.subscriptionId,
          target:
            t.case === "quota"
              ? { case: "quota", lines: t.value.lines.map((l) => ({ product: l.product, limit: l.limit, units: l.units, ...(l.amount ? { amount: l.amount } : {}) })) }
              : t.case === "wallet" || t.case === "credit"
                ? { case: t.case, ...(t.value.amount ? { amount: t.value.amount } : {}) }
                : t.case === "addOn"
                  ? { case: "addOn", packageId: t.value.packageId, limit: t.value.limit }
                  : { case: undefined },
          funding:
            f.case === "fromWallet"
              ? { case: "fromWallet", ...(f.value.maxAmount ? { maxAmount: f.value.maxAmount } : {}) }
              : f.case === "external"
                ? { case: "external", reference: f.value.reference, provider: f.value.provider, ...(f.value.amount ? { amount: f.value.amount } : {}) }
                : { case: undefined },
        });
        return create(TopUpResponseSchema, {
          transactionId: a.transactionId,
          newLimit: a.newLimit,
          newBalance: money(a.newBalanceMicros),
          creditBalance: money(a.creditBalanceMicros),
          replayed: a.replayed,
          grants: a.grants.map(grant),
        });
      },
      async getLimits(req, ctx) {
        const caller = authenticateDataPlane(auth, "GetLimits", ctx);
        const a = await quota.getLimits(caller, { apiKey: req.apiKey, keyId: req.keyId, accountId: req.accountId, product: req.product });
        return create(GetLimitsResponseSchema, {
          accountId: a.accountId,
          keyId: a.keyId,
          subscriptions: a.subscriptions.map((s) => ({
            id: s.id,
            planId: s.planId,
            planName: s.planName,
            cycleStart: ts(s.cycleStart),
            cycleEnd: ts(s.cycleEnd),
            validFrom: ts(s.validFrom),
            validUntil: ts(s.validUntil),
            limits: s.limits.map(limitStatus),
            addOns: s.addOns,
            accessBlocks: s.accessBlocks,
            status: s.status,
          })),
          wallets: a.wallets.map((w) => ({ kind: w.kind, balance: money(w.balance), totalDeposited: money(w.totalDeposited) })),
          grants: a.grants.map(grant),
          keys: a.keys.map(keyMessage),
          credit: { totalToppedUp: money(a.credit.totalToppedUp), spent: money(a.credit.spent), remaining: money(a.credit.remaining), creditKeys: a.credit.creditKeys },
          asOf: ts(a.asOf),
        });
      },
    },
    admin: {
      async createAccount(req, ctx) {
        asAdmin(ctx);
        const a = await admin.createAccount({ id: req.id, name: req.name, requestId: req.requestId });
        return create(CreateAccountResponseSchema, { account: create(AccountSchema, { id: a.id, name: a.name, createdAt: ts(a.createdAt.getTime()) }) });
      },
      async getAccount(req, ctx) {
        asAdmin(ctx);
        const a = await admin.getAccount(req.id);
        return create(GetAccountResponseSchema, { account: create(AccountSchema, { id: a.id, name: a.name, createdAt: ts(a.createdAt.getTime()) }) });
      },
      async applyPlans(req, ctx) {
        asAdmin(ctx);
        const plans = await admin.applyPlans(req.document);
        return create(ApplyPlansResponseSchema, { plans: plans.map(planSummary) });
      },
      async listPlans(_req, ctx) {
        asAdmin(ctx);
        const plans = await admin.listPlans();
        return create(ListPlansResponseSchema, { plans: plans.map(planSummary) });
      },
      async createSubscription(req, ctx) {
        asAdmin(ctx);
        const startsAt = timestampField("starts_at", req.startsAt);
        const endsAt = timestampField("ends_at", req.endsAt);
        const s = await admin.createSubscription({
          accountId: req.accountId,
          planId: req.planId,
          ...(startsAt !== undefined ? { startsAt } : {}),
          ...(endsAt !== undefined ? { endsAt } : {}),
          accessBlocks: req.accessBlocks,
          addOns: { ...req.addOns },
          requestId: req.requestId,
        });
        return create(CreateSubscriptionResponseSchema, { subscription: subscription(s) });
      },
      async cancelSubscription(req, ctx) {
        asAdmin(ctx);
        return create(CancelSubscriptionResponseSchema, { subscription: subscription(await admin.cancelSubscription(req.subscriptionId)) });
      },
      async setAddOn(req, ctx) {
        asAdmin(ctx);
        const r = await admin.setAddOn({ subscriptionId: req.subscriptionId, packageId: req.packageId, limit: req.limit, requestId: req.requestId });
        return create(SetAddOnResponseSchema, { subscription: subscription(r.subscription), transactionId: r.transactionId, newLimit: r.newLimit });
      },
      async createApiKey(req, ctx) {
        asAdmin(ctx);
        const expiresAt = timestampField("expires_at", req.expiresAt);
        const r = await admin.createApiKey({
          accountId: req.accountId,
          subscriptionId: req.subscriptionId,
          name: req.name,
          owner: req.owner,
          overageEnabled: req.overageEnabled,
          subLimits: { ...req.subLimits },
          ...(expiresAt !== undefined ? { expiresAt } : {}),
          requestId: req.requestId,
        });
        return create(CreateApiKeyResponseSchema, { key: keyMessage(r.key), apiKey: r.apiKey });
      },
      async revokeApiKey(req, ctx) {
        asAdmin(ctx);
        return create(RevokeApiKeyResponseSchema, { key: keyMessage(await admin.revokeApiKey(req.keyId)) });
      },
      async listApiKeys(req, ctx) {
        asAdmin(ctx);
        return create(ListApiKeysResponseSchema, { keys: (await admin.listApiKeys(req.accountId)).map(keyMessage) });
      },
      async deposit(req, ctx) {
        asAdmin(ctx);
        const p = req.payment;
        const r = await admin.deposit({ accountId: req.accountId, wallet: req.wallet, reference: p?.reference ?? "", provider: p?.provider ?? "", ...(p?.amount ? { amount: p.amount } : {}) });
        return create(DepositResponseSchema, { transactionId: r.transactionId, balance: money(r.balance), replayed: r.replayed });
      },
      async adjust(req, ctx) {
        asAdmin(ctx);
        const t = req.target;
        const validUntil = t.case === "quota" ? timestampField("quota.valid_until", t.value.validUntil) : undefined;
        const r = await admin.adjust({
          accountId: req.accountId,
          reason: req.reason,
          requestId: req.requestId,
          target:
            t.case === "quota"
              ? { case: "quota", subscriptionId: t.value.subscriptionId, limit: t.value.limit, product: t.value.product, units: t.value.units, priority: t.value.priority, ...(validUntil !== undefined ? { validUntil } : {}) }
              : t.case === "wallet"
                ? { case: "wallet", wallet: t.value.wallet, ...(t.value.amount ? { amount: t.value.amount } : {}) }
                : { case: undefined },
        });
        return create(AdjustResponseSchema, { transactionId: r.transactionId, grant: r.grant ? grant(r.grant) : undefined, balance: r.balance !== undefined ? money(r.balance) : undefined });
      },
      async listLedger(req, ctx) {
        asAdmin(ctx);
        const r = await admin.listLedger({ accountId: req.accountId, pageSize: req.pageSize, pageToken: req.pageToken });
        return create(ListLedgerResponseSchema, {
          nextPageToken: r.nextPageToken,
          transactions: r.transactions.map((t) =>
            create(LedgerTransactionSchema, {
              id: t.id,
              accountId: t.accountId,
              type: t.type,
              createdAt: ts(t.createdAt.getTime()),
              externalReference: t.externalReference ?? "",
              description: t.description,
              postings: t.postings.map((p) => ({ ledgerAccount: p.ledgerAccount, currency: p.currency, amountMicros: p.amount })),
            }),
          ),
        });
      },
    },
  };
}
