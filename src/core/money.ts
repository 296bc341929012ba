/**
 * Exact money. Amounts are bigint micro-units (1 USD = 1,000,000 micros) everywhere; never a float.
 */
import { InvalidArgumentError } from "./errors.ts";

export const MICROS_PER_UNIT = 1_000_000n;
/** Largest amount (micros or units) accepted in one request: 1e15. Counters stay far below 2^53. */
export const MAX_AMOUNT = 1_000_000_000_000_000n;

export interface MoneyParts {
  currencyCode: string;
  units: bigint;
  nanos: number;
}

/** Converts a google.type.Money-like value to micros, validating it. `positive` rejects zero and negatives. */
export function moneyToMicros(field: string, m: MoneyParts | undefined, opts: { positive?: boolean; allowNegative?: boolean } = { positive: true }): bigint {
  if (!m) throw new InvalidArgumentError(field, "is required");
  const currency = m.currencyCode === "" ? "USD" : m.currencyCode;
  if (currency !== "USD") throw new InvalidArgumentError(`${field}.currency_code`, `unsupported currency ${JSON.stringify(m.currencyCode)} (only USD)`);
  if (!Number.isInteger(m.nanos) || m.nanos <= -1_000_000_000 || m.nanos >= 1_000_000_000) {
    throw new InvalidArgumentError(`${field}.nanos`, "must be between -999,999,999 and 999,999,999");
  }
  if ((m.units > 0n && m.nanos < 0) || (m.units < 0n && m.nanos > 0)) {
    throw new InvalidArgumentError(field, "units and nanos must have the same sign");
  }
  if (m.nanos % 1000 !== 0) throw new InvalidArgumentError(`${field}.nanos`, "sub-micro amounts are not supported (nanos must be a multiple of 1,000)");
  const micros = m.units * MICROS_PER_UNIT + BigInt(m.nanos / 1000);
  if (opts.positive && micros <= 0n) throw new InvalidArgumentError(field, "must be greater than zero");
  if (!opts.allowNegative && micros < 0n) throw new InvalidArgumentError(field, "must not be negative");
  if (micros > MAX_AMOUNT || micros < -MAX_AMOUNT) throw new InvalidArgumentError(field, "is too large");
  return micros;
}

export function microsToMoney(micros: bigint): MoneyParts {
  const units = micros / MICROS_PER_UNIT;
  const nanos = Number(micros % MICROS_PER_UNIT) * 1000;
  return { currencyCode: "USD", units, nanos };
}

/** Parses a decimal string like "37.50" or "0.000002" into micros; more than 6 decimals is an error. */
export function parseDecimalMicros(field: string, text: string): bigint {
  const m = /^(-)?(\d{1,15})(?:\.(\d{1,6}))?$/.exec(text.trim());
  if (!m) throw new InvalidArgumentError(field, `${JSON.stringify(text)} is not a decimal amount with at most 6 decimals`);
  const micros = BigInt(m[2]!) * MICROS_PER_UNIT + BigInt((m[3] ?? "").padEnd(6, "0"));
  return m[1] ? -micros : micros;
}

/** Formats micros as a decimal string, e.g. 37500000n -> "37.50" (at least 2 decimals). */
export function formatMicros(micros: bigint): string {
  const neg = micros < 0n;
  const abs = neg ? -micros : micros;
  let frac = (abs % MICROS_PER_UNIT).toString().padStart(6, "0").replace(/0+$/, "");
  if (frac.length < 2) frac = frac.padEnd(2, "0");
  return `${neg ? "-" : ""}${abs / MICROS_PER_UNIT}.${frac}`;
}
