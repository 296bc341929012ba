/**
 * Pure formatting and parsing for the dashboard (no DOM), unit-tested in test/unit/web-format.test.ts. Money is
 * exact: units + nanos in, decimal strings out, and a typed amount is parsed digit by digit, never via a float.
 */

export interface MoneyLike {
  currencyCode: string;
  units: bigint;
  nanos: number;
}

/** "24.00 USD"; at least two decimals, more only when the amount has them (micro precision at most shown). */
export function formatMoney(m: MoneyLike | undefined): string {
  if (!m) return "—";
  const negative = m.units < 0n || m.nanos < 0;
  const units = negative ? -m.units : m.units;
  const nanos = Math.abs(m.nanos);
  let frac = String(nanos).padStart(9, "0").replace(/0+$/, "");
  if (frac.length < 2) frac = frac.padEnd(2, "0");
  return `${negative ? "-" : ""}${groupDigits(units.toString())}.${frac} ${m.currencyCode || "USD"}`;
}

/** 1234567 -> "1,234,567". */
export function formatCount(n: bigint): string {
  return (n < 0n ? "-" : "") + groupDigits((n < 0n ? -n : n).toString());
}

function groupDigits(digits: string): string {
  return digits.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

export class InputError extends Error {}

/** Parses a positive whole number of units ("100", "1,000"); throws InputError naming the problem. */
export function parseUnits(text: string): bigint {
  const s = text.trim().replaceAll(",", "").replaceAll("_", "");
  if (!/^\d+$/.test(s)) throw new InputError(`"${text.trim()}" is not a whole number of units`);
  const n = BigInt(s);
  if (n <= 0n) throw new InputError("the number of units must be more than zero");
  return n;
}

/** Parses a positive dollar amount ("1", "2.50", "$0.25"): exact, at most 6 decimals (micro-dollars). */
export function parseDollars(text: string): MoneyLike {
  const s = text.trim().replace(/^\$/, "").replaceAll(",", "");
  const m = /^(\d+)(?:\.(\d{1,6}))?$/.exec(s);
  if (!m) throw new InputError(`"${text.trim()}" is not an amount in dollars (like 2.50)`);
  const units = BigInt(m[1]!);
  const nanos = Number((m[2] ?? "").padEnd(9, "0"));
  if (units === 0n && nanos === 0) throw new InputError("the amount must be more than zero");
  return { currencyCode: "USD", units, nanos };
}

/** Share used, 0..1 (for the bar; exact enough for pixels), clamped. */
export function usedShare(used: bigint, limit: bigint): number {
  if (limit <= 0n) return used > 0n ? 1 : 0;
  if (used >= limit) return 1;
  if (used <= 0n) return 0;
  return Number((used * 10_000n) / limit) / 10_000;
}

/** "in 3 h 12 min", "in 45 s", "2 min ago". */
export function relativeTime(targetMs: number, nowMs: number): string {
  const delta = targetMs - nowMs;
  const abs = Math.abs(delta);
  let text: string;
  if (abs < 60_000) text = `${Math.max(1, Math.round(abs / 1000))} s`;
  else if (abs < 3_600_000) text = `${Math.round(abs / 60_000)} min`;
  else if (abs < 48 * 3_600_000) {
    const minutes = Math.round(abs / 60_000);
    const h = Math.floor(minutes / 60);
    const min = minutes % 60;
    text = min ? `${h} h ${min} min` : `${h} h`;
  } else text = `${Math.round(abs / 86_400_000)} days`;
  return delta >= 0 ? `in ${text}` : `${text} ago`;
}

/** "2026-12-01 20:15 UTC": unambiguous for a billing page. */
export function formatInstant(ms: number): string {
  const d = new Date(ms);
  const p = (n: number) => String(n).padStart(2, "0");
  return `${d.getUTCFullYear()}-${p(d.getUTCMonth() + 1)}-${p(d.getUTCDate())} ${p(d.getUTCHours())}:${p(d.getUTCMinutes())} UTC`;
}

/** A window length in words: 1s -> "second", 86400s -> "day". */
export function formatWindow(seconds: number): string {
  const names: Record<number, string> = { 1: "second", 60: "minute", 3600: "hour", 86400: "day" };
  if (names[seconds]) return `per ${names[seconds]}`;
  if (seconds % 86400 === 0) return `per ${seconds / 86400} days`;
  if (seconds % 3600 === 0) return `per ${seconds / 3600} hours`;
  if (seconds % 60 === 0) return `per ${seconds / 60} minutes`;
  return `per ${seconds} s`;
}

/** Connect error codes by number (the ones a dashboard can meet), and what to tell the customer. */
const CODE_WORDS: Record<number, string> = {
  3: "The request was not accepted",
  5: "Not found",
  7: "Not allowed",
  8: "Too many requests; wait a moment and try again",
  9: "That cannot be done now",
  13: "The quota service had an internal error; try again later",
  14: "The quota service is unavailable right now; try again in a moment",
  16: "The API key was not accepted",
  4: "The quota service did not answer in time",
};

/** Reasons (x-error-reason) with a better sentence than the code's. */
const REASON_WORDS: Record<string, string> = {
  INSUFFICIENT_BALANCE: "Your wallet balance is too low for this purchase",
  PRICE_EXCEEDS_MAXIMUM: "The price is higher than the maximum you set",
  KEY_NOT_FOUND: "This API key is not known (check that it was copied whole)",
  KEY_INVALID: "This is not a valid API key (keys look like qa_…_…)",
  KEY_REVOKED: "This API key has been revoked",
  SUBSCRIPTION_ENDED: "The subscription of this key has ended",
  TOPUP_NOT_OFFERED: "This plan does not sell extra quota",
};

/**
 * One sentence for a failed call. `code` and `message` come from a ConnectError; a browser that blocks the call
 * (CORS: origin not allowed, server down, wrong address) gives no code, only a failed fetch.
 */
export function describeError(e: { code?: number; rawMessage?: string; message?: string; reason?: string }, apiBase: string): string {
  const message = e.rawMessage ?? e.message ?? String(e);
  if (e.reason && REASON_WORDS[e.reason]) return `${REASON_WORDS[e.reason]}: ${message}.`;
  if (/failed to fetch|networkerror|load failed|fetch failed/i.test(message)) {
    return `Could not reach the quota service at ${apiBase}. It may be down, or it does not accept calls from this page's origin (QUOTA_ALLOWED_ORIGINS).`;
  }
  const words = e.code !== undefined ? CODE_WORDS[e.code] : undefined;
  if (e.code === 7 && /origin .* is not allowed/.test(message)) {
    return `This page's origin is not allowed to call the quota service (${message}); the operator adds it to QUOTA_ALLOWED_ORIGINS.`;
  }
  return words ? `${words}: ${message}.` : `Something went wrong: ${message}.`;
}
