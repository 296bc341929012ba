/**
 * Batches: many CheckAndReserve or Release decisions in one message. Each item is decided exactly as the single call
 * decides it (its own atomic script across its limits), independently: a denial or an error in one item changes
 * nothing for the others. The items are started together, so their script calls share the Redis connection's
 * pipeline (one round trip for the batch when the keys are cached) instead of one round trip per call.
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
  return settleAll(reqs, (r) => checkAndReserve(d, r));
}

export function releaseBatch(d: QuotaDeps, reqs: readonly ReleaseRequest[]): Promise<Array<BatchResult<ReleaseAnswer>>> {
  return settleAll(reqs, (r) => release(d, r));
}
