/**
 * The data-plane service, written once for every transport: it only composes the use cases, one per file —
 * check-and-reserve.ts, release.ts, top-up.ts, get-limits.ts (key authentication: key-auth.ts; add-ons:
 * add-ons.ts; reporting: limit-status.ts, views.ts).
 *
 * CheckAndReserve and Release never touch Postgres on the hot path: the key comes from the KeyCache, the decision
 * from one CounterStore call. Postgres is read only on a cache miss and on first touch of an account whose hot
 * state is absent (restore).
 */
import { checkAndReserveBatch, releaseBatch, type BatchResult } from "./batch.ts";
import { checkAndReserve, type CheckAnswer, type CheckRequest } from "./check-and-reserve.ts";
import { lease, type LeaseAnswer, type LeaseRequest } from "./lease.ts";
import { getLimits, type GetLimitsAnswer, type GetLimitsRequest } from "./get-limits.ts";
import type { Caller } from "./key-auth.ts";
import { withDefaults, type QuotaDeps, type QuotaServiceDeps } from "./quota-deps.ts";
import { release, type ReleaseAnswer, type ReleaseRequest } from "./release.ts";
import { topUp, type TopUpAnswer, type TopUpOptions, type TopUpRequest } from "./top-up.ts";

export type { CheckAnswer, CheckRequest, DenyReason } from "./check-and-reserve.ts";
export type { BatchResult } from "./batch.ts";
export type { LeaseAnswer, LeaseRequest } from "./lease.ts";
export type { GetLimitsAnswer, GetLimitsRequest, SubscriptionViewOut } from "./get-limits.ts";
export type { Caller } from "./key-auth.ts";
export { toStatus, type LimitStatusOut } from "./limit-status.ts";
export type { QuotaServiceDeps } from "./quota-deps.ts";
export type { ReleaseAnswer, ReleaseRequest } from "./release.ts";
export type { QuotaLineIn, TopUpAnswer, TopUpOptions, TopUpRequest } from "./top-up.ts";
export { changeAddOn } from "./add-ons.ts";
export { keyView, type GrantOut, type KeyViewOut } from "./views.ts";

export class QuotaService {
  readonly #d: QuotaDeps;

  constructor(deps: QuotaServiceDeps) {
    this.#d = withDefaults(deps);
  }

  checkAndReserve(req: CheckRequest): Promise<CheckAnswer> {
    return checkAndReserve(this.#d, req);
  }

  release(req: ReleaseRequest): Promise<ReleaseAnswer> {
    return release(this.#d, req);
  }

  topUp(caller: Caller, req: TopUpRequest, options?: TopUpOptions): Promise<TopUpAnswer> {
    return topUp(this.#d, caller, req, options);
  }

  getLimits(caller: Caller, req: GetLimitsRequest): Promise<GetLimitsAnswer> {
    return getLimits(this.#d, caller, req);
  }

  checkAndReserveBatch(reqs: readonly CheckRequest[]): Promise<Array<BatchResult<CheckAnswer>>> {
    return checkAndReserveBatch(this.#d, reqs);
  }

  releaseBatch(reqs: readonly ReleaseRequest[]): Promise<Array<BatchResult<ReleaseAnswer>>> {
    return releaseBatch(this.#d, reqs);
  }

  lease(req: LeaseRequest): Promise<LeaseAnswer> {
    return lease(this.#d, req);
  }
}

export function createQuotaService(deps: QuotaServiceDeps): QuotaService {
  return new QuotaService(deps);
}
