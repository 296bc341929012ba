/**
 * The shapes of identifiers and names, in one place. Every id is checked against its shape before it reaches a
 * store, so malformed input is INVALID_ARGUMENT naming the field, never a database error.
 */
import { createHash } from "node:crypto";
import { InvalidArgumentError } from "./errors.ts";
import { MAX_AMOUNT } from "./money.ts";

/** Plan ids, products, limit names, add-on packages: 1-63 of a-z 0-9 _ . - starting with a letter or digit. */
export const NAME_RE = /^[a-z0-9][a-z0-9_.-]{0,62}$/;
export const ACCOUNT_ID_RE = /^[a-z0-9][a-z0-9_-]{0,63}$/;
export const SUBSCRIPTION_ID_RE = /^sub_[a-z2-7]{16}$/;
export const KEY_ID_RE = /^[a-z2-7]{16}$/;
/** Idempotency keys and request ids chosen by callers. */
export const REQUEST_ID_RE = /^[A-Za-z0-9_.:~-]{1,128}$/;
/**
 * External payment references (checkout session ids, on-chain transaction hashes): printable ASCII, at most
 * PAYMENT_REFERENCE_MAX characters — the width of the idempotency_records.key column they are stored in.
 */
export const PAYMENT_REFERENCE_MAX = 128;
export const PAYMENT_REFERENCE_RE = new RegExp(`^[\\x21-\\x7e]{1,${PAYMENT_REFERENCE_MAX}}$`);
export const METHOD_RE = /^[A-Za-z0-9_.:/-]{1,128}$/;
export const METER_RE = /^[a-z][a-z0-9_]{0,31}$/;

/** A stable hash of a request, to tell a retry (same request) from a reused idempotency key (different request). */
export function hashRequest(value: unknown): string {
  return createHash("sha256")
    .update(JSON.stringify(value, (_k, v) => (typeof v === "bigint" ? `${v}n` : v)))
    .digest("hex");
}

/** An optional amount (units or micro-USD) from a request: at least `min`, at most MAX_AMOUNT. */
export function checkAmount(field: string, v: bigint | undefined, min: bigint): void {
  if (v === undefined) return;
  if (v < min) throw new InvalidArgumentError(field, min === 0n ? "must not be negative" : "must be at least 1");
  if (v > MAX_AMOUNT) throw new InvalidArgumentError(field, "is too large (at most 1e15)");
}

/** Custom meters of a request: at most 16, named by METER_RE, each a valid amount. */
export function checkMeters(field: string, meters: Record<string, bigint>): void {
  const names = Object.keys(meters);
  if (names.length > 16) throw new InvalidArgumentError(field, "at most 16 meters");
  for (const name of names) {
    if (!METER_RE.test(name)) throw new InvalidArgumentError(`${field}[${JSON.stringify(name).slice(0, 40)}]`, "meter names are 1-32 characters of a-z 0-9 _");
    checkAmount(`${field}.${name}`, meters[name], 0n);
  }
}

/**
 * The value stored under a caller- or operator-chosen name, never one inherited from Object's prototype: a method
 * named "constructor" or a limit named "toString" is an ordinary name (plain objects come from JSON and protobuf maps).
 */
export function own<V>(record: Readonly<Record<string, V>>, name: string): V | undefined {
  return Object.hasOwn(record, name) ? record[name] : undefined;
}
