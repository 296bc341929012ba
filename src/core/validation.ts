/**
 * The shapes of identifiers and names, in one place. Every id is checked against its shape before it reaches a
 * store, so malformed input is INVALID_ARGUMENT naming the field, never a database error.
 */
import { createHash } from "node:crypto";

/** Plan ids, products, limit names, add-on packages: 1-63 of a-z 0-9 _ . - starting with a letter or digit. */
export const NAME_RE = /^[a-z0-9][a-z0-9_.-]{0,62}$/;
export const ACCOUNT_ID_RE = /^[a-z0-9][a-z0-9_-]{0,63}$/;
export const SUBSCRIPTION_ID_RE = /^sub_[a-z2-7]{16}$/;
export const KEY_ID_RE = /^[a-z2-7]{16}$/;
/** Idempotency keys and request ids chosen by callers. */
export const REQUEST_ID_RE = /^[A-Za-z0-9_.:~-]{1,128}$/;
export const METHOD_RE = /^[A-Za-z0-9_.:/-]{1,128}$/;
export const METER_RE = /^[a-z][a-z0-9_]{0,31}$/;

/** A stable hash of a request, to tell a retry (same request) from a reused idempotency key (different request). */
export function hashRequest(value: unknown): string {
  return createHash("sha256")
    .update(JSON.stringify(value, (_k, v) => (typeof v === "bigint" ? `${v}n` : v)))
    .digest("hex");
}
