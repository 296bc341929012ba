/**
 * Add-ons: recurring packages that raise a periodic quota (e.g. +25k requests per day). Bought, changed or removed
 * by TopUp (target add_on, the account owner's key) and by the admin API; invoiced monthly (a receivable posting).
 */
import { FailedPreconditionError, InvalidArgumentError } from "./errors.ts";
import { activeAddOn } from "./limits.ts";
import { formatMicros } from "./money.ts";
import { addOnMonthlyPrice } from "./plan.ts";
import type { SubscriptionRecord, TransactionRecord, UnitOfWork } from "./ports.ts";
import { own } from "./validation.ts";

const fieldPath = (parent: string, name: string) => (parent ? `${parent}.${name}` : name);

/** Buys, changes or removes a subscription's add-on; returns the ledger postings (monthly price, invoiced). */
export async function changeAddOn(uow: UnitOfWork, sub: SubscriptionRecord, packageId: string, limitName: string, field: string) {
  const plan = (await uow.getPlan(sub.planId))!.spec;
  const candidates = plan.limits.filter((l) => l.addOns && l.addOns.length > 0);
  const spec = limitName ? candidates.find((l) => l.name === limitName) : candidates.length === 1 ? candidates[0] : undefined;
  if (!spec) {
    throw new InvalidArgumentError(fieldPath(field, "limit"), limitName ? `plan ${plan.id} has no add-ons for limit ${JSON.stringify(limitName)}` : `plan ${plan.id} has ${candidates.length} limits with add-ons; name one`);
  }
  const postings: TransactionRecord["postings"] = [];
  let description: string;
  const previous = own(sub.addOns, spec.name);
  if (!packageId) {
    if (!previous) throw new FailedPreconditionError("NO_ADD_ON", `no add-on is active on ${spec.name}`);
    delete sub.addOns[spec.name];
    description = `add-on removed: ${previous} from ${spec.name}`;
  } else {
    const pkg = spec.addOns!.find((p) => p.id === packageId);
    if (!pkg) {
      const largest = spec.addOns!.reduce((m, p) => (p.amount > m ? p.amount : m), 0n);
      throw new InvalidArgumentError(fieldPath(field, "package_id"), `unknown add-on package ${JSON.stringify(packageId)} for ${spec.name}; packages: ${spec.addOns!.map((p) => p.id).join(", ")} (largest +${largest})`);
    }
    if (previous === pkg.id) throw new FailedPreconditionError("ADD_ON_ALREADY_ACTIVE", `${pkg.id} is already active on ${spec.name}`);
    const price = addOnMonthlyPrice(spec, pkg);
    sub.addOns = { ...sub.addOns, [spec.name]: pkg.id };
    description = `add-on ${previous ? `changed from ${previous} to` : "bought:"} ${pkg.id} (+${pkg.amount} ${spec.name}) at ${formatMicros(price)} USD per month`;
    if (price > 0n) {
      postings.push({ ledgerAccount: `receivable:${sub.accountId}`, currency: "USD", amount: -price });
      postings.push({ ledgerAccount: "revenue:addons", currency: "USD", amount: price });
    }
  }
  await uow.saveSubscription(sub);
  const addOn = activeAddOn(spec, sub);
  return { postings, description, newLimit: spec.limit! + (addOn?.amount ?? 0n), subscription: sub };
}
