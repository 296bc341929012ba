/**
 * Release: settle a reservation once — charge the actual cost/spend (lower or higher than reserved), refund the
 * difference, free the concurrency slot. Idempotent on the reservation id: a second Release returns the first
 * result. The reservation id names the account, so no lookup is needed; Postgres is never read.
 */
import type { ReleaseState } from "./counter-store.ts";
import { InvalidArgumentError, QuotaError, UnavailableError } from "./errors.ts";
import { parseReservationId } from "./ids.ts";
import type { KeyContext } from "./key-cache.ts";
import { priceOf } from "./limits.ts";
import { MAX_AMOUNT } from "./money.ts";
import { withDeadline, type QuotaDeps } from "./quota-deps.ts";
import { checkAmount, checkMeters } from "./validation.ts";

export interface ReleaseRequest {
  reservationId: string;
  outcome: "COMMIT" | "CANCEL";
  actualCost?: bigint;
  actualSpendMicros?: bigint;
  actualMeters: Record<string, bigint>;
}

export interface ReleaseAnswer {
  state: ReleaseState;
  chargedCost: bigint;
  refundedCost: bigint;
  chargedSpendMicros: bigint;
  overage: bigint;
  replayed: boolean;
}

export async function release(d: QuotaDeps, req: ReleaseRequest): Promise<ReleaseAnswer> {
  if (!req.reservationId) throw new InvalidArgumentError("reservation_id", "is required");
  const parsed = parseReservationId(req.reservationId);
  if (!parsed) throw new InvalidArgumentError("reservation_id", "is not a reservation id");
  const { accountId } = parsed;
  checkAmount("actual_cost", req.actualCost, 0n);
  checkAmount("actual_spend_micros", req.actualSpendMicros, 0n);
  checkMeters("actual_meters", req.actualMeters);
  const actual: Record<string, bigint> = { ...req.actualMeters };
  if (req.actualCost !== undefined) actual.units = req.actualCost;
  if (req.actualSpendMicros !== undefined) actual.spend = req.actualSpendMicros;
  else if (Object.keys(req.actualMeters).length > 0) {
    // Spend follows the actual meters at the key's current plan prices (the key comes from the cache: no
    // Postgres). Meters not named are priced at zero: send every priced meter, or actual_spend_micros.
    let ctx: KeyContext | null;
    try {
      ctx = await d.keys.get(parsed.keyId);
    } catch (e) {
      throw new UnavailableError("cannot price the actual meters: key store unreachable; retry, or give actual_spend_micros", { cause: e });
    }
    if (ctx?.plan.spec.pricing) {
      actual.spend = priceOf(ctx.plan.spec, req.actualMeters, 1n);
      if (actual.spend > MAX_AMOUNT) throw new InvalidArgumentError("actual_meters", "the priced spend of these meters is too large (at most 1e15 micro-USD)");
    }
  }
  let r;
  try {
    r = await withDeadline(
      d.store.release({ accountId, reservationId: req.reservationId, outcome: req.outcome, actual }),
      d.storeDeadlineMs * 4,
    );
  } catch (e) {
    if (e instanceof QuotaError && e.code !== "UNAVAILABLE") throw e;
    throw new UnavailableError("counter store unreachable; retry the Release (it is idempotent)", { cause: e });
  }
  if (r.outcome === "NOT_FOUND") throw new QuotaError("NOT_FOUND", "RESERVATION_NOT_FOUND", `reservation ${JSON.stringify(req.reservationId)} not found (never made, or settled longer ago than the retention grace past its TTL)`);
  d.touched?.(accountId);
  const reservedUnits = r.reserved.units ?? 0n;
  const chargedUnits = r.charged.units ?? 0n;
  return {
    state: r.state!,
    chargedCost: chargedUnits,
    refundedCost: reservedUnits - chargedUnits,
    chargedSpendMicros: r.charged.spend ?? 0n,
    overage: r.overage,
    replayed: r.outcome === "REPLAYED",
  };
}
