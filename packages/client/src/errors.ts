/**
 * The three ways a call can fail, kept apart on purpose: a denial is never an error (it is a `CheckResult` with
 * `allowed: false`); "the quota service did not answer in time or is broken" is a `QuotaUnavailableError` (the only
 * case the fail-open / fail-closed policy applies to); "the request was wrong" is a `QuotaRequestError` (the server
 * said so: a misconfigured product, a bad service token) or a `QuotaInputError` (caught before anything was sent).
 */
import { Code, ConnectError } from "@connectrpc/connect";

/** Base class of every error this package throws. `code` is the gRPC status name in lower camel case
 * (`"unavailable"`, `"invalidArgument"`, ...) or `"input"` for client-side validation. */
export class QuotaError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** Bad input caught by the client before anything was sent. `field` names it (e.g. `"cost"`, `"meters.tokens"`). */
export class QuotaInputError extends QuotaError {
  readonly field: string;
  constructor(field: string, message: string) {
    super("input", `${field}: ${message}`);
    this.field = field;
  }
}

/** Why the quota service counts as unavailable. */
export type UnavailableKind =
  /** No answer within the deadline (`deadlineMs`). */
  | "deadline"
  /** The connection could not be made or broke (refused, reset, DNS, TLS). */
  | "unreachable"
  /** The service answered with a server-side failure (UNAVAILABLE, INTERNAL, RESOURCE_EXHAUSTED, ...). */
  | "server";

/**
 * The quota service could not give an answer. The client's `failureMode` decides what `checkAndReserve` makes of
 * it (fail open: admitted without counting; fail closed: denied with reason `UNAVAILABLE`); `release`, `topUp` and
 * `getLimits` throw it.
 */
export class QuotaUnavailableError extends QuotaError {
  readonly kind: UnavailableKind;
  constructor(kind: UnavailableKind, code: string, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.kind = kind;
  }
}

/** The service rejected the request (INVALID_ARGUMENT naming the field, UNAUTHENTICATED, FAILED_PRECONDITION with a
 * `reason` such as `INSUFFICIENT_BALANCE`, ...). Retrying the same request gives the same answer. */
export class QuotaRequestError extends QuotaError {
  /** The `x-error-reason` the server attached (FAILED_PRECONDITION reasons), if any. */
  readonly reason: string | undefined;
  constructor(code: string, message: string, reason: string | undefined, options?: { cause?: unknown }) {
    super(code, message, options);
    this.reason = reason;
  }
}

/** The caller's own AbortSignal ended the call. */
export class QuotaCanceledError extends QuotaError {
  constructor(options?: { cause?: unknown }) {
    super("canceled", "the call was canceled by its AbortSignal", options);
  }
}

/**
 * Server-side failures that say "the service is not working right now", not "your request is wrong": these are the
 * codes a fail-open policy may admit past. Everything else (INVALID_ARGUMENT, UNAUTHENTICATED, PERMISSION_DENIED,
 * NOT_FOUND, FAILED_PRECONDITION, UNIMPLEMENTED, ...) is a caller or configuration bug and must surface.
 */
const SERVER_FAILURES = new Set<Code>([Code.Unavailable, Code.Internal, Code.Unknown, Code.ResourceExhausted, Code.Aborted, Code.DataLoss]);

function codeName(code: Code): string {
  const name = Code[code] ?? "unknown";
  return name.charAt(0).toLowerCase() + name.slice(1);
}

/** Network-level failures that connect-node reports as UNAVAILABLE / INTERNAL / UNKNOWN with a Node cause. */
const NETWORK_ERRNO = /^(ECONNREFUSED|ECONNRESET|EPIPE|ENOTFOUND|EAI_AGAIN|EHOSTUNREACH|ENETUNREACH|ETIMEDOUT|ERR_HTTP2_[A-Z_]+|ERR_SSL_[A-Z_]+|ERR_TLS_[A-Z_]+)$/;

function isNetworkCause(e: unknown): boolean {
  for (let c: unknown = e, depth = 0; c && depth < 5; c = (c as { cause?: unknown }).cause, depth++) {
    const code = (c as { code?: unknown }).code;
    if (typeof code === "string" && NETWORK_ERRNO.test(code)) return true;
  }
  return false;
}

/** Translates whatever the transport threw into one of this package's errors. */
export function toQuotaError(e: unknown, signal: AbortSignal | undefined): QuotaError {
  if (e instanceof QuotaError) return e;
  const ce = ConnectError.from(e);
  if (ce.code === Code.Canceled) {
    if (signal?.aborted) return new QuotaCanceledError({ cause: e });
    // Not our own abort: the server or the connection reset the stream.
    return new QuotaUnavailableError("unreachable", codeName(ce.code), `quota service reset the call: ${ce.rawMessage}`, { cause: e });
  }
  if (ce.code === Code.DeadlineExceeded) {
    return new QuotaUnavailableError("deadline", codeName(ce.code), `quota service: no answer within the deadline (${ce.rawMessage})`, { cause: e });
  }
  if (isNetworkCause(ce)) {
    return new QuotaUnavailableError("unreachable", codeName(ce.code), `quota service unreachable: ${ce.rawMessage}`, { cause: e });
  }
  if (SERVER_FAILURES.has(ce.code)) {
    return new QuotaUnavailableError("server", codeName(ce.code), `quota service failed: ${ce.rawMessage}`, { cause: e });
  }
  const reason = ce.metadata.get("x-error-reason") ?? undefined;
  return new QuotaRequestError(codeName(ce.code), ce.rawMessage, reason, { cause: e });
}
