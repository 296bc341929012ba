/**
 * CheckAndReserve: may this key make this call, at this cost, now? Resolve the key from the cache (no Postgres) ->
 * the limits that apply with this call's amounts -> ONE counter-store call that checks all of them and, only if all
 * pass, applies all of them and stores the reservation -> the answer with statuses and headers.
 *
 * A denial is an answer, never an error. A counter store that does not answer within the deadline is answered by
 * the plan's failure mode (fail closed: DENIED UNAVAILABLE; fail open: ALLOWED, flagged).
 */
import type { CounterLimit, DenyReasonName, Mode, ReserveCommand } from "./counter-store.ts";
import { InvalidArgumentError, QuotaError } from "./errors.ts";
import { buildHeaders, type HeaderOptions } from "./headers.ts";
import { newReservationId } from "./ids.ts";
import { resolveCachedKey, resolveKey, type KeyDenial } from "./key-auth.ts";
import { toStatus, type LimitStatusOut } from "./limit-status.ts";
import { callPlanFor, priceOf, withAmounts } from "./limits.ts";
import { MAX_AMOUNT } from "./money.ts";
import { reservationTtlMs } from "./plan.ts";
import { reserveWithRestore, type QuotaDeps } from "./quota-deps.ts";
import { METHOD_RE, NAME_RE, REQUEST_ID_RE, hashRequest, checkAmount, checkMeters, own } from "./validation.ts";

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

export type DenyReason = DenyReasonName | KeyDenial | "PRODUCT_NOT_ALLOWED" | "UNAVAILABLE";

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
  /** The plan the call was decided by (absent when the key was not resolved): for metrics and tracing, which must
   * not depend on the key still being in the cache when they look. */
  plan?: string;
}

/** `storeDeadlineMs`: the counter-store deadline of this call (default: the service's; a batch gives its items more,
 * batch.ts). */
export async function checkAndReserve(d: QuotaDeps, req: CheckRequest, storeDeadlineMs = d.storeDeadlineMs): Promise<CheckAnswer> {
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

  // A cached key is resolved without waiting (most calls); another is loaded.
  const { ctx, denial } = resolveCachedKey(d.keys, req.apiKey, req.keyId) ?? (await resolveKey(d.keys, req.apiKey, req.keyId));
  if (denial || !ctx) return report(d, { ...emptyAnswer(), reason: denial ?? "KEY_INVALID" }, req.mode);
  const plan = ctx.plan.spec;
  if (plan.products && plan.products.length > 0 && !plan.products.includes(req.product)) {
    return report(d, { ...emptyAnswer(), reason: "PRODUCT_NOT_ALLOWED", plan: ctx.plan.id }, req.mode);
  }

  const units = req.cost ?? BigInt(own(plan.methods.costs, req.method) ?? plan.methods.default);
  const spend = req.estimatedSpendMicros ?? priceOf(plan, req.meters, 1n);
  if (spend > MAX_AMOUNT) throw new InvalidArgumentError("meters", "the priced spend of these meters is too large (at most 1e15 micro-USD)");
  // Everything per key context and product that does not change per call comes from the call plan (computed once,
  // again only past the next period boundary); this call adds its amounts.
  const callPlan = callPlanFor(ctx, req.product, d.clock.now());
  const applied = withAmounts(callPlan.limits, { units, spend, meters: req.meters });
  const accountId = ctx.key.accountId;
  const counters: CounterLimit[] = new Array(applied.length);
  for (let i = 0; i < applied.length; i++) counters[i] = applied[i]!.counter;
  const cmd: ReserveCommand = {
    accountId,
    reservationId: newReservationId(accountId, ctx.key.id),
    mode: req.mode,
    ttlMs: ttl ?? reservationTtlMs(plan),
    product: req.product,
    expiryPolicy: plan.reservation.onExpiry,
    gates: callPlan.gates,
    limits: counters,
  };
  if (req.idempotencyId) {
    cmd.idempotencyId = `${ctx.key.id}:${req.idempotencyId}`;
    // What the call asks for (not its mode: an enforced decision answers a later SHADOW repeat).
    cmd.requestHash = hashRequest([req.product, req.method, req.cost ?? null, req.estimatedSpendMicros ?? null, Object.entries(req.meters).sort(), ttl ?? null]).slice(0, 16);
  }

  let result;
  try {
    result = await reserveWithRestore(d, cmd, storeDeadlineMs);
  } catch (e) {
    if (e instanceof QuotaError && e.code !== "UNAVAILABLE") throw e;
    // Counter store unreachable or too slow: the plan decides (DESIGN §6). A script runs whole or not at all, but a
    // slow one may still run after the deadline: cancel its reservation, best effort (same connection, so the
    // cancel is applied after it; if Redis is down both are lost together).
    d.store.release({ accountId, reservationId: cmd.reservationId, outcome: "CANCEL", actual: {} }).catch(() => {});
    const open = plan.failureMode === "open";
    return report(d, 
      { ...emptyAnswer(), decision: open ? "ALLOWED" : "DENIED", ...(open ? {} : { reason: "UNAVAILABLE" as const }), failOpen: open, cost: units, plan: ctx.plan.id },
      req.mode,
    );
  }
  if (result.outcome === "IDEMPOTENCY_MISMATCH") {
    // As for TopUp's idempotency_key: a reused id with another request is bad input, and changes nothing.
    throw new InvalidArgumentError("idempotency_id", "was already used for a different request (product, method, cost, spend, meters or TTL differ)");
  }
  // The reservation stays open until released or expired: the flusher sweeps the account after its TTL even if idle.
  if (req.mode !== "CHECK_ONLY" && result.outcome === "ALLOWED") d.touched?.(accountId, d.clock.now() + cmd.ttlMs);

  const limits: LimitStatusOut[] = new Array(applied.length);
  for (let i = 0; i < applied.length; i++) limits[i] = toStatus(applied[i]!, result.states[i]);
  const deniedLimit = result.deniedLimitId ? (applied.find((a) => a.counter.id === result.deniedLimitId)?.info.name ?? "") : "";
  const headerOptions: HeaderOptions = { now: result.now, overageEnabled: ctx.key.overage, template: callPlan.headers };
  if (result.outcome === "DENIED" && result.retryAfterMs !== undefined) headerOptions.retryAfterMs = result.retryAfterMs;
  const answer: CheckAnswer = {
    decision: result.outcome === "ALLOWED" ? "ALLOWED" : "DENIED",
    reservationId: result.reservationId ?? "",
    overage: result.overage,
    limits,
    headers: buildHeaders(limits, headerOptions),
    cost: units,
    reservedSpendMicros: callPlan.hasBudget ? spend : 0n,
    failOpen: false,
    deniedLimit,
    replayed: result.replayed,
    plan: ctx.plan.id,
  };
  if (result.reason) answer.reason = result.reason;
  if (result.shadowReason) answer.shadowReason = result.shadowReason;
  if (result.retryAfterMs !== undefined) answer.retryAfterMs = result.retryAfterMs;
  if (result.availableAt !== undefined) answer.availableAt = result.availableAt;
  return report(d, answer, req.mode);
}

/** The answer of a call decided without the counter store (key denials, a product the plan does not allow, the
 * store unreachable); made only then, not on every call. */
function emptyAnswer(): CheckAnswer {
  return {
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
}

function report(d: QuotaDeps, a: CheckAnswer, mode: Mode): CheckAnswer {
  if (mode === "SHADOW" && a.decision === "DENIED") {
    // Key problems and outages in SHADOW mode: still allowed, flagged.
    a.shadowReason = a.reason!;
    delete a.reason;
    a.decision = "ALLOWED";
  }
  d.onDecision?.({ decision: a.decision, reason: a.reason ?? a.shadowReason ?? "", mode, failOpen: a.failOpen });
  return a;
}
