/**
 * Add-on billing. An add-on package has a monthly price; the subscription's monthly cycle (anchored on its start) is
 * the billing period. Rules (written in docs/plans.md):
 *
 * - Each cycle is booked once, in full, for the add-ons active when it is first billed: by the renewal pass (every
 *   replica runs it on the reconcile interval), or by the first add-on change in that cycle, whichever comes first.
 *   "Once" is a claim row (`addon-period`, `<subscription>:<cycle start>`) inserted in the same transaction as the
 *   booking, with ON CONFLICT DO NOTHING: two replicas racing book one of them.
 * - A change within a cycle books the difference of the monthly prices prorated to what is left of the cycle
 *   (rounded toward zero to the micro-dollar): an upgrade charges the remainder, a downgrade or a removal credits it.
 *
 * Charges are receivables of the account (`receivable:<account>`) against `revenue:addons`.
 */
import { newSortableId } from "./ids.ts";
import { cycleOf } from "./limits.ts";
import { formatMicros } from "./money.ts";
import { addOnMonthlyPrice, type PlanSpec } from "./plan.ts";
import type { Clock, Database, PostingRecord, SubscriptionRecord, UnitOfWork } from "./ports.ts";

export const ADDON_PERIOD_SCOPE = "addon-period";

/** Monthly price of the add-ons active on a subscription (limit -> package), under its plan. */
export function addOnsMonthlyPrice(plan: PlanSpec, addOns: Record<string, string>): bigint {
  let total = 0n;
  for (const [limitName, pkgId] of Object.entries(addOns)) {
    const l = plan.limits.find((x) => x.name === limitName);
    const pkg = l?.addOns?.find((p) => p.id === pkgId);
    if (l && pkg) total += addOnMonthlyPrice(l, pkg);
  }
  return total;
}

/** `monthly` scaled to what is left of the cycle at `now`, rounded toward zero (never more than the full price). */
export function prorated(monthly: bigint, cycle: { start: number; end: number }, now: number): bigint {
  const length = BigInt(cycle.end - cycle.start);
  const left = BigInt(Math.max(0, Math.min(cycle.end - now, cycle.end - cycle.start)));
  return (monthly * left) / length;
}

export const chargePostings = (accountId: string, amount: bigint): PostingRecord[] =>
  amount === 0n
    ? []
    : [
        { ledgerAccount: `receivable:${accountId}`, currency: "USD", amount: -amount },
        { ledgerAccount: "revenue:addons", currency: "USD", amount },
      ];

/**
 * Books the subscription's current cycle in full for its active add-ons, unless that cycle was booked already.
 * Returns the amount booked (0n when nothing was due or the cycle was booked before). Runs inside `uow`.
 */
export async function bookCurrentCycle(uow: UnitOfWork, sub: SubscriptionRecord, plan: PlanSpec, now: number): Promise<bigint> {
  const cycle = cycleOf(sub, now);
  if (!(await uow.claimOnce(ADDON_PERIOD_SCOPE, `${sub.id}:${cycle.start}`))) return 0n;
  const price = addOnsMonthlyPrice(plan, sub.addOns);
  if (price === 0n) return 0n;
  await uow.insertTransaction({
    id: newSortableId("tx"),
    accountId: sub.accountId,
    type: "addon_change",
    createdAt: new Date(now),
    externalReference: null,
    description: `add-on renewal for the cycle from ${new Date(cycle.start).toISOString()}: ${Object.values(sub.addOns).join(", ")} at ${formatMicros(price)} USD per month`,
    postings: chargePostings(sub.accountId, price),
  });
  return price;
}

/**
 * The renewal pass: books the current cycle of every active subscription with add-ons. A subscription checked in
 * this cycle is not looked at again until its cycle ends (kept in memory), so a pass costs one query when nothing is
 * due. A failing subscription is reported and retried at the next pass.
 */
export class AddOnRenewals {
  readonly #db: Database;
  readonly #clock: Clock;
  readonly #checkedUntil = new Map<string, number>();

  constructor(deps: { db: Database; clock: Clock }) {
    this.#db = deps.db;
    this.#clock = deps.clock;
  }

  async run(onError?: (subscriptionId: string, err: unknown) => void): Promise<{ booked: number; failed: number }> {
    const now = this.#clock.now();
    let booked = 0;
    let failed = 0;
    for (const id of await this.#db.listSubscriptionsWithAddOns()) {
      if ((this.#checkedUntil.get(id) ?? 0) > now) continue;
      try {
        const result = await this.#db.transaction(async (uow) => {
          const sub = await uow.getSubscription(id);
          if (!sub || sub.status !== "active" || (sub.endsAt && sub.endsAt.getTime() <= now) || sub.startsAt.getTime() > now) return { amount: 0n, until: now + 60_000 };
          const plan = (await uow.getPlan(sub.planId))?.spec;
          if (!plan) return { amount: 0n, until: now + 60_000 };
          return { amount: await bookCurrentCycle(uow, sub, plan, now), until: cycleOf(sub, now).end };
        });
        if (result.amount > 0n) booked++;
        this.#checkedUntil.set(id, result.until);
      } catch (err) {
        failed++;
        onError?.(id, err);
      }
    }
    return { booked, failed };
  }
}
