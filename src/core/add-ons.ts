/**
 * Add-ons: recurring packages that raise a periodic quota (e.g. +25k requests per day). Bought, changed or removed
 * by TopUp (target add_on, the account owner's key) and by the admin API; billed per monthly cycle (add-on-billing.ts).
 */
import { FailedPreconditionError, InvalidArgumentError } from "./errors.ts";
import { bookCurrentCycle, chargePostings, prorated } from "./add-on-billing.ts";
import { activeAddOn, cycleOf } from "./limits.ts";
import { formatMicros } from "./money.ts";
import { addOnMonthlyPrice } from "./plan.ts";
import type { SubscriptionRecord, UnitOfWork } from "./ports.ts";
import { own } from "./validation.ts";

const fieldPath = (parent: string, name: string) => (parent ? `${parent}.${name}` : name);

/** Buys, changes or removes a subscription's add-on; returns the ledger postings (the prorated price difference). */
export async function changeAddOn(uow: UnitOfWork, sub: SubscriptionRecord, packageId: string, limitName: string, field: string, now: number) {
  const plan = (await uow.getPlan(sub.planId))!.spec;
  const candidates = plan.limits.filter((l) => l.addOns && l.addOns.length > 0);
  const spec = limitName ? candidates.find((l) => l.name === limitName) : candidates.length === 1 ? candidates[0] : undefined;
  if (!spec) {
    throw new InvalidArgumentError(fieldPath(field, "limit"), limitName ? `plan ${plan.id} has no add-ons for limit ${JSON.stringify(limitName)}` : `plan ${plan.id} has ${candidates.length} limits with add-ons; name one`);
  }
  let description: string;
  const previous = own(sub.addOns, spec.name);
  const previousPkg = previous ? spec.addOns!.find((p) => p.id === previous) : undefined;
  const oldPrice = previousPkg ? addOnMonthlyPrice(spec, previousPkg) : 0n;
  let newPrice = 0n;
  let next: Record<string, string>;
  if (!packageId) {
    if (!previous) throw new FailedPreconditionError("NO_ADD_ON", `no add-on is active on ${spec.name}`);
    next = { ...sub.addOns };
    delete next[spec.name];
    description = `add-on removed: ${previous} from ${spec.name}`;
  } else {
    const pkg = spec.addOns!.find((p) => p.id === packageId);
    if (!pkg) {
      const largest = spec.addOns!.reduce((m, p) => (p.amount > m ? p.amount : m), 0n);
      throw new InvalidArgumentError(fieldPath(field, "package_id"), `unknown add-on package ${JSON.stringify(packageId)} for ${spec.name}; packages: ${spec.addOns!.map((p) => p.id).join(", ")} (largest +${largest})`);
    }
    if (previous === pkg.id) throw new FailedPreconditionError("ADD_ON_ALREADY_ACTIVE", `${pkg.id} is already active on ${spec.name}`);
    newPrice = addOnMonthlyPrice(spec, pkg);
    next = { ...sub.addOns, [spec.name]: pkg.id };
    description = `add-on ${previous ? `changed from ${previous} to` : "bought:"} ${pkg.id} (+${pkg.amount} ${spec.name}) at ${formatMicros(newPrice)} USD per month`;
  }
  // The cycle is booked at the add-ons it started with (if no renewal pass did it yet), then the change is prorated
  // to what is left of it (docs/plans.md, "Add-on billing").
  if (sub.startsAt.getTime() <= now) await bookCurrentCycle(uow, sub, plan, now);
  const charge = sub.startsAt.getTime() <= now ? prorated(newPrice - oldPrice, cycleOf(sub, now), now) : 0n;
  if (charge !== 0n) description += `; ${charge > 0n ? "charged" : "credited"} ${formatMicros(charge > 0n ? charge : -charge)} USD for the rest of this cycle`;
  sub.addOns = next;
  await uow.saveSubscription(sub);
  const addOn = activeAddOn(spec, sub);
  return { postings: chargePostings(sub.accountId, charge), description, newLimit: spec.limit! + (addOn?.amount ?? 0n), subscription: sub };
}
