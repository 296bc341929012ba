/**
 * Postgres (and PGlite) errors, classified once for the Database port, so the core sees only its own error
 * types: a unique violation is a DuplicateKeyError (a concurrent duplicate committed first), a lost connection
 * or a deadlock/serialization conflict is UNAVAILABLE (nothing was applied: retry), the wallet balance CHECK is
 * INSUFFICIENT_BALANCE. Anything else passes through unchanged (INTERNAL at the transport).
 */
import { DuplicateKeyError, FailedPreconditionError, QuotaError, UnavailableError } from "../../core/errors.ts";

export function isUniqueViolation(e: unknown): boolean {
  if (e instanceof DuplicateKeyError) return true;
  const name = (e as { name?: string; constructor?: { name?: string } })?.constructor?.name ?? "";
  return name === "UniqueConstraintViolationException" || /duplicate key|unique constraint/i.test(String((e as Error)?.message ?? ""));
}

/** Database errors that are not ours become typed core errors; typed errors thrown by the work pass through. */
export function classifyDbError(e: unknown): unknown {
  if (e instanceof QuotaError || e instanceof DuplicateKeyError) return e;
  if (isUniqueViolation(e)) return new DuplicateKeyError({ cause: e });
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
