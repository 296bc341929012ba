/**
 * Billing periods. Monthly cycles are anchored on the subscription start: cycle k starts k months after the
 * anchor, on the anchor's day of month clamped to the month's last day, at the anchor's UTC time of day. So a
 * subscription started on Jan 31 renews on Feb 28 (29 in leap years), Mar 31, Apr 30, ... — it never drifts to
 * the 28th for good. Daily periods start at the anchor's UTC time of day.
 */
export const DAY_MS = 86_400_000;

function monthStart(anchor: number, k: number): number {
  const a = new Date(anchor);
  const y = a.getUTCFullYear();
  const m = a.getUTCMonth() + k;
  const targetYear = y + Math.floor(m / 12);
  const targetMonth = ((m % 12) + 12) % 12;
  const lastDay = new Date(Date.UTC(targetYear, targetMonth + 1, 0)).getUTCDate();
  const day = Math.min(a.getUTCDate(), lastDay);
  return Date.UTC(targetYear, targetMonth, day, a.getUTCHours(), a.getUTCMinutes(), a.getUTCSeconds(), a.getUTCMilliseconds());
}

/** The index of the monthly cycle containing `now` (0 = the first; negative before the anchor). */
export function monthlyCycleIndex(anchor: number, now: number): number {
  const a = new Date(anchor);
  const n = new Date(now);
  let k = (n.getUTCFullYear() - a.getUTCFullYear()) * 12 + (n.getUTCMonth() - a.getUTCMonth());
  while (monthStart(anchor, k) > now) k--;
  while (monthStart(anchor, k + 1) <= now) k++;
  return k;
}

export interface Cycle {
  start: number;
  end: number;
}

export function monthlyCycle(anchor: number, now: number): Cycle {
  const k = monthlyCycleIndex(anchor, now);
  return { start: monthStart(anchor, k), end: monthStart(anchor, k + 1) };
}

export function dailyCycle(anchor: number, now: number): Cycle {
  const start = anchor + Math.floor((now - anchor) / DAY_MS) * DAY_MS;
  return { start, end: start + DAY_MS };
}

/** Boundaries [previous start, start, end, next end] around `now`, for the counter store to pick from by its own
 * clock (tolerates skew between this process and Redis of up to one period). */
export function fixedBounds(period: "daily" | "monthly", anchor: number, now: number): [number, number, number, number] {
  if (period === "daily") {
    const c = dailyCycle(anchor, now);
    return [c.start - DAY_MS, c.start, c.end, c.end + DAY_MS];
  }
  const k = monthlyCycleIndex(anchor, now);
  return [monthStart(anchor, k - 1), monthStart(anchor, k), monthStart(anchor, k + 1), monthStart(anchor, k + 2)];
}
