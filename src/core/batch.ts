/**
 * Batches: many CheckAndReserve or Release decisions in one message. Each item is decided exactly as the single call
 * decides it (atomically across its limits), independently: a denial or an error in one item changes nothing for
 * the others. The items are started together, so the Redis store sends the items of one account as one script call
 * (in the message's order; redis-counter-store.ts) and the accounts' scripts in one pipeline: one round trip for
 * the batch when the keys are cached.
 *
 * The counter-store deadline of an item is the service's plus 1 ms per item of the message: a message of N
 * decisions is N decisions of Redis work queued at once, and a healthy but busy Redis must not answer a large
 * batch UNAVAILABLE (the deadline is there for a Redis that does not answer).
 */
import { checkAndReserve, type CheckAnswer, type CheckRequest } from "./check-and-reserve.ts";
import { InvalidArgumentError } from "./errors.ts";
import type { QuotaDeps } from "./quota-deps.ts";
import { release, type ReleaseAnswer, type ReleaseRequest } from "./release.ts";

export const MAX_BATCH = 1000;

export type BatchResult<T> = { ok: true; value: T } | { ok: false; error: unknown };

async function settleAll<I, T>(items: readonly I[], run: (item: I) => Promise<T>): Promise<Array<BatchResult<T>>> {
  if (items.length === 0) throw new InvalidArgumentError("requests", "must hold at least 1 request");
  if (items.length > MAX_BATCH) throw new InvalidArgumentError("requests", `must hold at most ${MAX_BATCH} requests (got ${items.length})`);
  const settled = await Promise.allSettled(items.map((item) => run(item)));
  return settled.map((s) => (s.status === "fulfilled" ? { ok: true, value: s.value } : { ok: false, error: s.reason as unknown }));
}

export function checkAndReserveBatch(d: QuotaDeps, reqs: readonly CheckRequest[]): Promise<Array<BatchResult<CheckAnswer>>> {
  const deadline = d.storeDeadlineMs + reqs.length;
  return settleAll(reqs, (r) => checkAndReserve(d, r, deadline));
}

export function releaseBatch(d: QuotaDeps, reqs: readonly ReleaseRequest[]): Promise<Array<BatchResult<ReleaseAnswer>>> {
  return settleAll(reqs, (r) => release(d, r));
}
