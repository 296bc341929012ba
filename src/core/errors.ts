/**
 * Typed errors of the core. Each maps to exactly one RPC status (src/transport/errors.ts). A denial is not an
 * error: it is a value in the answer. Anything else thrown becomes INTERNAL with a generic message.
 */
export type ErrorCode =
  | "INVALID_ARGUMENT"
  | "NOT_FOUND"
  | "ALREADY_EXISTS"
  | "FAILED_PRECONDITION"
  | "PERMISSION_DENIED"
  | "UNAUTHENTICATED"
  | "UNAVAILABLE"
  | "RESOURCE_EXHAUSTED"
  | "ABORTED";

export class QuotaError extends Error {
  readonly code: ErrorCode;
  /** A machine-readable reason, e.g. INSUFFICIENT_BALANCE, sent as error detail / metadata `x-error-reason`. */
  readonly reason: string;
  constructor(code: ErrorCode, reason: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.reason = reason;
    this.name = "QuotaError";
  }
}

/** Bad input. `field` is the request field path, e.g. "quota.lines[0].amount". Nothing was changed. */
export class InvalidArgumentError extends QuotaError {
  readonly field: string;
  constructor(field: string, message: string) {
    super("INVALID_ARGUMENT", "INVALID_ARGUMENT", `${field}: ${message}`);
    this.field = field;
  }
}

export class NotFoundError extends QuotaError {
  constructor(what: string, id: string) {
    super("NOT_FOUND", "NOT_FOUND", `${what} ${JSON.stringify(id)} not found`);
  }
}

/** The request is valid but the state does not allow it (e.g. INSUFFICIENT_BALANCE). Nothing was changed. */
export class FailedPreconditionError extends QuotaError {
  constructor(reason: string, message: string) {
    super("FAILED_PRECONDITION", reason, message);
  }
}

export class PermissionDeniedError extends QuotaError {
  constructor(message: string) {
    super("PERMISSION_DENIED", "PERMISSION_DENIED", message);
  }
}

export class UnauthenticatedError extends QuotaError {
  constructor(message: string) {
    super("UNAUTHENTICATED", "UNAUTHENTICATED", message);
  }
}

/** A storage dependency is down or too slow. Callers may retry or fail open/closed by their own policy. */
export class UnavailableError extends QuotaError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("UNAVAILABLE", "UNAVAILABLE", message, options);
  }
}

/** A concurrent request with the same idempotency key is still running: retry (with backoff) for its result. */
export class IdempotencyInProgressError extends QuotaError {
  constructor(what: string) {
    super("ABORTED", "IDEMPOTENCY_IN_PROGRESS", `${what} is in progress in another request; retry for its result`);
  }
}

export class ResourceExhaustedError extends QuotaError {
  constructor(message: string) {
    super("RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED", message);
  }
}

/**
 * A write hit a unique constraint: a concurrent request with the same idempotency key (or payment reference)
 * committed first. Raised by the Database port; the use cases answer with the first request's result. Not a
 * QuotaError: one that escapes is a bug (INTERNAL).
 */
export class DuplicateKeyError extends Error {
  constructor(options?: { cause?: unknown }) {
    super("duplicate key", options);
    this.name = "DuplicateKeyError";
  }
}
