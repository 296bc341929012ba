/** The QuotaService (data plane) over the core: authenticate, decode the message, call the use case, encode. */
import { create } from "@bufbuild/protobuf";
import {
  BatchItemErrorSchema,
  CheckAndReserveBatchResponseSchema,
  CheckAndReserveBatchResultSchema,
  ReleaseBatchResultSchema,
  LeaseResponseSchema,
  ReleaseBatchResponseSchema,
  GetLimitsResponseSchema,
  Outcome,
  ReleaseResponseSchema,
  ReleaseState,
  TopUpResponseSchema,
  type CheckAndReserveBatchRequest,
  type CheckAndReserveBatchResponse,
  type CheckAndReserveRequest,
  type LeaseRequest,
  type LeaseResponse,
  type ReleaseBatchRequest,
  type ReleaseBatchResponse,
  type CheckAndReserveResponse,
  type GetLimitsRequest,
  type GetLimitsResponse,
  type ReleaseRequest,
  type ReleaseResponse,
  type TopUpRequest,
  type TopUpResponse,
} from "../gen/quota/v1/quota_pb.ts";
import { Decision, type LimitStatus } from "../gen/quota/v1/types_pb.ts";
import { InvalidArgumentError } from "../core/errors.ts";
import { mapError } from "./errors.ts";
import type { CheckAnswer, CheckRequest, QuotaService, ReleaseAnswer, ReleaseRequest as CoreReleaseRequest } from "../core/quota-service.ts";
import { authenticateDataPlane, type AuthConfig, type CallContext } from "./auth.ts";
import { dur, durationField, grant, keyMessage, limitStatus, meters, mode, money, reason, ts } from "./conversions.ts";

export interface QuotaApi {
  checkAndReserve(req: CheckAndReserveRequest, ctx: CallContext): Promise<CheckAndReserveResponse>;
  release(req: ReleaseRequest, ctx: CallContext): Promise<ReleaseResponse>;
  topUp(req: TopUpRequest, ctx: CallContext): Promise<TopUpResponse>;
  getLimits(req: GetLimitsRequest, ctx: CallContext): Promise<GetLimitsResponse>;
  checkAndReserveBatch(req: CheckAndReserveBatchRequest, ctx: CallContext): Promise<CheckAndReserveBatchResponse>;
  releaseBatch(req: ReleaseBatchRequest, ctx: CallContext): Promise<ReleaseBatchResponse>;
  lease(req: LeaseRequest, ctx: CallContext): Promise<LeaseResponse>;
}

export function createQuotaApi(quota: QuotaService, auth: AuthConfig, onInternalError?: (method: string, err: unknown) => void): QuotaApi {
  /** One item's error, as the single call would answer it; the message names the item (`requests[i].field: ...`). */
  const batchError = (method: string, index: number, e: unknown) => {
    const m = mapError(e);
    if (m.code === "INTERNAL") onInternalError?.(method, m.cause);
    return create(BatchItemErrorSchema, { code: m.grpc as number, message: `requests[${index}].${m.message}`, reason: m.reason });
  };
  return {
  checkAndReserve(req, ctx) {
    // The hot path: not an async method (a promise and a frame more per call); bad input is a rejection all the same.
    try {
      authenticateDataPlane(auth, "CheckAndReserve", ctx);
      return quota.checkAndReserve(checkRequestIn(req)).then(checkAnswerOut);
    } catch (e) {
      return Promise.reject(e);
    }
  },
  async release(req, ctx) {
    authenticateDataPlane(auth, "Release", ctx);
    return releaseAnswerOut(await quota.release(releaseRequestIn(req)));
  },
  async checkAndReserveBatch(req, ctx) {
    authenticateDataPlane(auth, "CheckAndReserveBatch", ctx);
    // Bad input in one item is that item's error (named with its index); the others are decided.
    const inputs = req.requests.map((r, i) => attempt(i, () => checkRequestIn(r)));
    const results = await quota.checkAndReserveBatch(inputs.map((x) => (x.ok ? x.value : INVALID_CHECK)));
    return create(CheckAndReserveBatchResponseSchema, {
      results: results.map((r, i) => {
        const input = inputs[i]!;
        const error = !input.ok ? input.error : !r.ok ? r.error : undefined;
        return create(CheckAndReserveBatchResultSchema, {
          result: error !== undefined || !r.ok ? { case: "error", value: batchError("CheckAndReserveBatch", i, error) } : { case: "response", value: checkAnswerOut(r.value) },
        });
      }),
    });
  },
  async releaseBatch(req, ctx) {
    authenticateDataPlane(auth, "ReleaseBatch", ctx);
    const inputs = req.requests.map((r, i) => attempt(i, () => releaseRequestIn(r)));
    const results = await quota.releaseBatch(inputs.map((x) => (x.ok ? x.value : INVALID_RELEASE)));
    return create(ReleaseBatchResponseSchema, {
      results: results.map((r, i) => {
        const input = inputs[i]!;
        const error = !input.ok ? input.error : !r.ok ? r.error : undefined;
        return create(ReleaseBatchResultSchema, {
          result: error !== undefined || !r.ok ? { case: "error", value: batchError("ReleaseBatch", i, error) } : { case: "response", value: releaseAnswerOut(r.value) },
        });
      }),
    });
  },
  async lease(req, ctx) {
    authenticateDataPlane(auth, "Lease", ctx);
    const ttl = durationField("ttl", req.ttl);
    const a = await quota.lease({
      apiKey: req.apiKey,
      keyId: req.keyId,
      product: req.product,
      method: req.method,
      calls: req.calls,
      ...(ttl !== undefined ? { ttlMs: ttl } : {}),
      close: req.close.map((c) => ({ leaseId: c.leaseId, usedCalls: c.usedCalls })),
    });
    return create(LeaseResponseSchema, {
      decision: a.decision === "ALLOWED" ? Decision.ALLOWED : Decision.DENIED,
      reason: reason(a.reason),
      leaseId: a.leaseId,
      grantedCalls: a.grantedCalls,
      costPerCall: a.costPerCall,
      spendPerCallMicros: a.spendPerCallMicros,
      expiresAt: ts(a.expiresAt),
      retryAfter: dur(a.retryAfterMs),
      limits: a.limits.map(limitStatus),
      closed: a.closed.map(releaseAnswerOut),
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
  };
}

function checkRequestIn(req: CheckAndReserveRequest): CheckRequest {
  const ttl = durationField("reservation_ttl", req.reservationTtl);
  const out: CheckRequest = {
    apiKey: req.apiKey,
    keyId: req.keyId,
    product: req.product,
    method: req.method,
    meters: meters(req.meters),
    idempotencyId: req.idempotencyId,
    mode: mode(req.mode),
  };
  if (req.cost !== undefined) out.cost = req.cost;
  if (req.estimatedSpendMicros !== undefined) out.estimatedSpendMicros = req.estimatedSpendMicros;
  if (ttl !== undefined) out.reservationTtlMs = ttl;
  return out;
}

/** The plan an answer was decided by, beside the message (not a field of the API): read by the metrics and
 * tracing wrapper (src/observability/metrics.ts). */
export const ANSWER_PLAN = new WeakMap<object, string>();

function checkAnswerOut(a: CheckAnswer): CheckAndReserveResponse {
  // The message as create() makes it (every field, proto order; an absent message field is undefined), without
  // create's walk over the schema: this is the answer of every call.
  const limits: LimitStatus[] = new Array(a.limits.length);
  for (let i = 0; i < limits.length; i++) limits[i] = limitStatus(a.limits[i]!);
  const out: CheckAndReserveResponse = {
    $typeName: "quota.v1.CheckAndReserveResponse",
    decision: a.decision === "ALLOWED" ? Decision.ALLOWED : Decision.DENIED,
    reason: reason(a.reason),
    reservationId: a.reservationId,
    overage: a.overage,
    retryAfter: dur(a.retryAfterMs),
    limits,
    headers: a.headers,
    cost: a.cost,
    reservedSpendMicros: a.reservedSpendMicros,
    shadowReason: reason(a.shadowReason),
    failOpen: a.failOpen,
    availableAt: ts(a.availableAt),
    deniedLimit: a.deniedLimit,
    replayed: a.replayed,
  };
  if (a.plan) ANSWER_PLAN.set(out, a.plan);
  return out;
}

function releaseRequestIn(req: ReleaseRequest): CoreReleaseRequest {
  let outcome: "COMMIT" | "CANCEL";
  if (req.outcome === Outcome.CANCEL) outcome = "CANCEL";
  else if (req.outcome === Outcome.COMMIT || req.outcome === Outcome.OUTCOME_UNSPECIFIED) outcome = "COMMIT";
  else throw new InvalidArgumentError("outcome", `unknown value ${req.outcome}`);
  return {
    reservationId: req.reservationId,
    outcome,
    ...(req.actualCost !== undefined ? { actualCost: req.actualCost } : {}),
    ...(req.actualSpendMicros !== undefined ? { actualSpendMicros: req.actualSpendMicros } : {}),
    actualMeters: meters(req.actualMeters),
  };
}

function releaseAnswerOut(a: ReleaseAnswer): ReleaseResponse {
  return create(ReleaseResponseSchema, {
    state: ReleaseState[a.state],
    chargedCost: a.chargedCost,
    refundedCost: a.refundedCost,
    chargedSpendMicros: a.chargedSpendMicros,
    overage: a.overage,
    replayed: a.replayed,
  });
}

/** Placeholders for items whose input did not decode: never decided (their error is answered instead). */
const INVALID_CHECK: CheckRequest = { apiKey: "", keyId: "", product: "", method: "", meters: {}, idempotencyId: "", mode: "CHECK_ONLY" };
const INVALID_RELEASE: CoreReleaseRequest = { reservationId: "", outcome: "CANCEL", actualMeters: {} };

function attempt<T>(_index: number, f: () => T): { ok: true; value: T } | { ok: false; error: unknown } {
  try {
    return { ok: true, value: f() };
  } catch (error) {
    return { ok: false, error };
  }
}

