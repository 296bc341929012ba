/**
 * What the Express, Fastify and Hono middleware share: the options, the CheckAndReserve request built from a web
 * request, which response headers to send, the HTTP status of each denial, and the Release after the response.
 * Each adapter only translates its framework's request, response and lifecycle into these.
 */
import type { Amount, AllowedResult, CheckRequest, CheckResult, DeniedResult, DenyReason, Mode, QuotaClient, ReleaseRequest } from "../client.ts";
import { QuotaError, QuotaUnavailableError } from "../errors.ts";

type MaybePromise<T> = T | Promise<T>;

/** Why the middleware denied a request: a reason from the server, or `KEY_MISSING` when `getKey` found none. */
export type DenialReason = DenyReason | "KEY_MISSING";

export interface Denial {
  reason: DenialReason;
  /** The HTTP status the default response uses (see `statusFor`). */
  status: number;
  /** Seconds until a retry can succeed, when known (also sent as `Retry-After`). */
  retryAfterSeconds: number | undefined;
  /** A short English explanation, used in the default JSON body. */
  message: string;
  /** The headers the middleware sends with the denial (already chosen by `standardHeaders` / `quotaHeaders`). */
  headers: Record<string, string>;
  /** The server's answer; undefined for KEY_MISSING. When the client's failure policy denied (service
   * unavailable), `result.unavailable` is set. */
  result: DeniedResult | undefined;
}

/** When an `onError` hook is called: before the handler (CheckAndReserve could not be answered by the service) or
 * after the response (Release failed; the reservation then expires by the plan's policy). */
export type ErrorPhase = "check" | "release";

/**
 * Options shared by every adapter; `Ctx` is what the framework hands a handler (Express `[req, res]`, Fastify
 * `[request, reply]`, Hono `[c]`).
 */
export interface QuotaMiddlewareOptions<Ctx extends unknown[]> {
  /** A client from `createQuotaClient`. */
  client: QuotaClient;
  /** The end customer's API key (or key id with `keyKind: "keyId"`) for this request; undefined or "" answers 401
   * `KEY_MISSING` without calling the service. */
  getKey: (...ctx: Ctx) => MaybePromise<string | undefined | null>;
  /** Whether `getKey` returns an API key (default) or a key id (when the service authenticated the key itself). */
  keyKind?: "apiKey" | "keyId";
  /** The product (API) being called. */
  product: string | ((...ctx: Ctx) => string);
  /** The method, selecting the plan's cost weight (default: the HTTP method, e.g. `GET`). */
  method?: string | ((...ctx: Ctx) => string);
  /** Explicit cost in units for this request, overriding the method weight. */
  cost?: (...ctx: Ctx) => MaybePromise<Amount | undefined>;
  /** Estimated meters (e.g. `{ tokens: 1000 }`). */
  meters?: (...ctx: Ctx) => MaybePromise<Record<string, Amount> | undefined>;
  /** Estimated spend in micro-USD (credit budgets). */
  estimatedSpendMicros?: (...ctx: Ctx) => MaybePromise<Amount | undefined>;
  /** Idempotency id for a retried request (e.g. from an `Idempotency-Key` header). */
  idempotencyId?: (...ctx: Ctx) => string | undefined;
  /** How long the reservation lives without a Release (server default 30 s). Keep it above the slowest handler. */
  reservationTtlMs?: number;
  mode?: Mode;
  /** Requests for which the middleware does nothing. */
  skip?: (...ctx: Ctx) => MaybePromise<boolean>;
  /** Send the IETF `RateLimit-Policy` and `RateLimit` headers from the answer (default true). */
  standardHeaders?: boolean;
  /** Send the `X-UnitsLimit-*` quota headers (overage, allocated, used, remaining) from the answer (default true). */
  quotaHeaders?: boolean;
  /**
   * Called on every denial before the default response. Send your own response here to replace it (Express:
   * `res.status(..).send(..)`, Fastify: `reply.send(..)`, Hono: return a `Response`); otherwise the default JSON
   * body `{ error, reason, limit, retryAfterSeconds }` is sent with `denial.status`.
   */
  onDenied?: (denial: Denial, ...ctx: Ctx) => unknown;
  /**
   * What to do when the quota service is unavailable (no answer within the client's deadline, unreachable, or a
   * server failure): `true` lets the request through without a reservation (fail open), `false` answers 503 (fail
   * closed). Default: the client's `failureMode`.
   */
  skipOnError?: boolean;
  /**
   * Told whenever the service was unavailable for a check (before `skipOnError` applies; send a response here to
   * replace the default one), and of every failed Release (`phase: "release"`). Without it, failed Releases are
   * reported with `process.emitWarning`.
   */
  onError?: (error: QuotaError, info: { phase: ErrorPhase }, ...ctx: Ctx) => unknown;
  /** Actual cost in units to COMMIT (default: the reserved cost). Called after the response. */
  actualCost?: (...ctx: Ctx) => MaybePromise<Amount | undefined>;
  /** Actual meters to COMMIT (e.g. tokens really used), priced by the plan for budgets. */
  actualMeters?: (...ctx: Ctx) => MaybePromise<Record<string, Amount> | undefined>;
  /** Actual spend in micro-USD to COMMIT. */
  actualSpendMicros?: (...ctx: Ctx) => MaybePromise<Amount | undefined>;
  /** CANCEL (refund in full) when the client went away before the response was complete (default true). */
  cancelOnAbort?: boolean;
  /** CANCEL when the handler failed: it threw, or the response status is 5xx (default true). */
  cancelOnError?: boolean;
}

/**
 * The HTTP status of each denial: 429 for "too much, retry later" (rate, concurrency, quota), 402 for a spent
 * money budget (paying is what helps), 401 for a key that is not a valid credential, 403 for a valid key that has
 * no access (now or to this product), 503 when the quota service itself is unavailable.
 */
export function statusFor(reason: DenialReason): number {
  switch (reason) {
    case "RATE_LIMITED":
    case "QUOTA_EXHAUSTED":
    case "CONCURRENCY_LIMITED":
      return 429;
    case "BUDGET_EXHAUSTED":
      return 402;
    case "KEY_MISSING":
    case "KEY_INVALID":
    case "KEY_REVOKED":
    case "KEY_EXPIRED":
      return 401;
    case "SUBSCRIPTION_ENDED":
    case "SUBSCRIPTION_NOT_STARTED":
    case "OUTSIDE_ACCESS_WINDOW":
    case "PRODUCT_NOT_ALLOWED":
      return 403;
    case "UNAVAILABLE":
      return 503;
    default:
      // A reason this package does not know yet (a newer server): still a refusal.
      return 403;
  }
}

const MESSAGES: Record<string, string> = {
  RATE_LIMITED: "rate limit exceeded",
  QUOTA_EXHAUSTED: "quota exhausted",
  CONCURRENCY_LIMITED: "too many requests in flight",
  BUDGET_EXHAUSTED: "credit budget exhausted",
  KEY_MISSING: "missing API key",
  KEY_INVALID: "invalid API key",
  KEY_REVOKED: "API key revoked",
  KEY_EXPIRED: "API key expired",
  SUBSCRIPTION_ENDED: "subscription ended",
  SUBSCRIPTION_NOT_STARTED: "subscription not started",
  OUTSIDE_ACCESS_WINDOW: "outside the subscription's access window",
  PRODUCT_NOT_ALLOWED: "product not included in the plan",
  UNAVAILABLE: "quota service unavailable",
};

export interface ResolvedOptions<Ctx extends unknown[]> extends QuotaMiddlewareOptions<Ctx> {
  standardHeaders: boolean;
  quotaHeaders: boolean;
  cancelOnAbort: boolean;
  cancelOnError: boolean;
}

export function resolveOptions<Ctx extends unknown[]>(o: QuotaMiddlewareOptions<Ctx>, adapter: string): ResolvedOptions<Ctx> {
  const fail = (field: string, msg: string): never => {
    throw new TypeError(`${adapter}: ${field}: ${msg}`);
  };
  if (!o || typeof o !== "object") fail("options", "required");
  if (!o.client || typeof o.client.checkAndReserve !== "function") fail("client", "required: a client from createQuotaClient");
  if (typeof o.getKey !== "function") fail("getKey", "required: (request) => the API key");
  if (typeof o.product !== "string" && typeof o.product !== "function") fail("product", "required: a string or (request) => string");
  if (o.keyKind !== undefined && o.keyKind !== "apiKey" && o.keyKind !== "keyId") fail("keyKind", `must be "apiKey" or "keyId"`);
  for (const k of ["standardHeaders", "quotaHeaders", "cancelOnAbort", "cancelOnError", "skipOnError"] as const) {
    if (o[k] !== undefined && typeof o[k] !== "boolean") fail(k, "must be a boolean");
  }
  return {
    ...o,
    standardHeaders: o.standardHeaders ?? true,
    quotaHeaders: o.quotaHeaders ?? true,
    cancelOnAbort: o.cancelOnAbort ?? true,
    cancelOnError: o.cancelOnError ?? true,
  };
}

/** The CheckAndReserve request for one web request. */
export async function buildCheck<Ctx extends unknown[]>(o: ResolvedOptions<Ctx>, key: string, httpMethod: string, ctx: Ctx): Promise<CheckRequest> {
  const product = typeof o.product === "function" ? o.product(...ctx) : o.product;
  const method = o.method === undefined ? httpMethod : typeof o.method === "function" ? o.method(...ctx) : o.method;
  const cost = await o.cost?.(...ctx);
  const meters = await o.meters?.(...ctx);
  const spend = await o.estimatedSpendMicros?.(...ctx);
  const idem = o.idempotencyId?.(...ctx);
  return {
    ...(o.keyKind === "keyId" ? { keyId: key } : { apiKey: key }),
    product,
    method,
    ...(cost !== undefined ? { cost } : {}),
    ...(meters !== undefined ? { meters } : {}),
    ...(spend !== undefined ? { estimatedSpendMicros: spend } : {}),
    ...(idem ? { idempotencyId: idem } : {}),
    ...(o.reservationTtlMs !== undefined ? { reservationTtlMs: o.reservationTtlMs } : {}),
    ...(o.mode !== undefined ? { mode: o.mode } : {}),
  } as CheckRequest;
}

type HeaderChoice = { standardHeaders: boolean; quotaHeaders: boolean };

/** The answer's headers this middleware sends, as chosen by `standardHeaders` / `quotaHeaders`. `Retry-After` is
 * sent on denials whenever it is known (it is plain HTTP, not a rate-limit header family). */
export function headersFor(o: HeaderChoice, result: CheckResult): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(result.headers)) {
    const lower = name.toLowerCase();
    if (lower === "retry-after") continue;
    if (lower.startsWith("x-unitslimit-")) {
      if (o.quotaHeaders) out[name] = value;
    } else if (o.standardHeaders) {
      out[name] = value;
    }
  }
  if (!result.allowed) {
    const retry = retryAfterSeconds(result);
    if (retry !== undefined) out["Retry-After"] = String(retry);
  }
  return out;
}

function retryAfterSeconds(result: DeniedResult): number | undefined {
  const fromServer = Object.entries(result.headers).find(([k]) => k.toLowerCase() === "retry-after")?.[1];
  if (fromServer !== undefined && /^\d+$/.test(fromServer)) return Number(fromServer);
  if (result.retryAfterMs !== undefined) return Math.max(1, Math.ceil(result.retryAfterMs / 1000));
  return undefined;
}

export function denialOf(o: HeaderChoice, result: DeniedResult | undefined): Denial {
  const reason: DenialReason = result ? result.reason : "KEY_MISSING";
  const headers = result ? headersFor(o, result) : {};
  const retry = headers["Retry-After"];
  return {
    reason,
    status: statusFor(reason),
    retryAfterSeconds: retry === undefined ? undefined : Number(retry),
    message: MESSAGES[reason] ?? `denied: ${reason}`,
    headers,
    result,
  };
}

/** The default JSON body of a denial. */
export function denialBody(d: Denial): { error: string; reason: DenialReason; limit?: string; retryAfterSeconds?: number } {
  return {
    error: d.message,
    reason: d.reason,
    ...(d.result?.deniedLimit ? { limit: d.result.deniedLimit } : {}),
    ...(d.retryAfterSeconds !== undefined ? { retryAfterSeconds: d.retryAfterSeconds } : {}),
  };
}

/** What the adapter must do with a request after the check. */
export type CheckStep =
  | { kind: "skip" }
  | { kind: "allowed"; result: AllowedResult }
  | { kind: "denied"; denial: Denial }
  /** The service was unavailable and the policy fails open: run the handler without a reservation. */
  | { kind: "unavailable-open"; result: AllowedResult; error: QuotaUnavailableError }
  /** The service was unavailable and the policy fails closed: answer 503 (`denial.reason` is UNAVAILABLE). */
  | { kind: "unavailable-closed"; denial: Denial; error: QuotaUnavailableError };

/** Resolves the key and calls CheckAndReserve with the middleware's failure policy. Request errors (a wrong
 * product, a bad service token) are thrown: they are bugs to fix, not outages to ride through. */
export async function check<Ctx extends unknown[]>(o: ResolvedOptions<Ctx>, httpMethod: string, ctx: Ctx): Promise<CheckStep> {
  if (o.skip && (await o.skip(...ctx))) return { kind: "skip" };
  const key = await o.getKey(...ctx);
  if (typeof key !== "string" || key === "") return { kind: "denied", denial: denialOf(o, undefined) };
  const request = await buildCheck(o, key, httpMethod, ctx);
  const result = await o.client.checkAndReserve(request, o.skipOnError === undefined ? {} : { failureMode: o.skipOnError ? "open" : "closed" });
  if (result.unavailable) {
    return result.allowed
      ? { kind: "unavailable-open", result, error: result.unavailable }
      : { kind: "unavailable-closed", denial: denialOf(o, result), error: result.unavailable };
  }
  if (result.allowed) return { kind: "allowed", result };
  return { kind: "denied", denial: denialOf(o, result) };
}

/** How a request ended, as far as Release cares. */
export interface Ending {
  /** The client went away before the response was complete. */
  aborted: boolean;
  /** The handler threw, or the response status is 5xx. */
  failed: boolean;
}

/**
 * Releases a reservation once the request ended: CANCEL when it was aborted or failed (as configured), else COMMIT
 * with the actual cost/meters/spend callbacks. Release is idempotent, so one retry after an unavailable answer is
 * safe; a failure after that goes to `onError` (the reservation then expires by the plan's policy).
 */
export async function settle<Ctx extends unknown[]>(o: ResolvedOptions<Ctx>, result: AllowedResult, ending: Ending, ctx: Ctx): Promise<void> {
  const reservationId = result.reservationId;
  if (!reservationId) return;
  const cancel = (ending.aborted && o.cancelOnAbort) || (ending.failed && o.cancelOnError);
  const request: ReleaseRequest = { reservationId, outcome: cancel ? "CANCEL" : "COMMIT" };
  if (!cancel) {
    try {
      const [cost, meters, spend] = await Promise.all([o.actualCost?.(...ctx), o.actualMeters?.(...ctx), o.actualSpendMicros?.(...ctx)]);
      if (cost !== undefined) request.actualCost = cost;
      if (meters !== undefined) request.actualMeters = meters;
      if (spend !== undefined) request.actualSpendMicros = spend;
    } catch (e) {
      // The reserved amount is charged (COMMIT without actuals); the callback's failure is reported.
      report(o, e instanceof QuotaError ? e : new QuotaError("actual", `actual cost callback failed: ${String((e as Error)?.message ?? e)}`, { cause: e }), ctx);
    }
  }
  for (let attempt = 0; ; attempt++) {
    try {
      await o.client.release(request);
      return;
    } catch (e) {
      if (e instanceof QuotaUnavailableError && attempt === 0) {
        await new Promise((r) => setTimeout(r, 50));
        continue;
      }
      report(o, e instanceof QuotaError ? e : new QuotaError("unknown", String(e), { cause: e }), ctx);
      return;
    }
  }
}

function report<Ctx extends unknown[]>(o: ResolvedOptions<Ctx>, error: QuotaError, ctx: Ctx): void {
  if (o.onError) {
    try {
      void Promise.resolve(o.onError(error, { phase: "release" }, ...ctx)).catch(() => {});
    } catch {
      // a failing hook must not break the response path
    }
    return;
  }
  process.emitWarning(`@quota-authority/client: Release failed: ${error.message}`, { code: "QUOTA_RELEASE_FAILED" });
}

/** Calls `fn` once, whichever of several lifecycle events comes first. */
export function once(fn: (ending: Ending) => void): (ending: Ending) => void {
  let done = false;
  return (ending) => {
    if (done) return;
    done = true;
    fn(ending);
  };
}
