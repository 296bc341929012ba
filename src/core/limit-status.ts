/**
 * How one limit is reported to callers (CheckAndReserve answers and GetLimits): the counter store's state of the
 * limit, with the sources of its capacity (plan, add-on, grants, credit deposits) so every number is explained.
 */
import type { LimitState, SourceState } from "./counter-store.ts";
import { activeAddOn, type AppliedLimit, type LimitInfo } from "./limits.ts";
import type { PlanSpec } from "./plan.ts";
import type { SubscriptionRecord } from "./ports.ts";

export interface LimitStatusOut extends LimitInfo {
  limit: bigint;
  used: bigint;
  remaining: bigint;
  resetAt?: number;
  overage: bigint;
  overageTotal: bigint;
  exceeded: boolean;
  sources: Array<{ kind: string; id: string; amount: bigint; used: bigint; expiresAt?: number; priority: number; product: string }>;
}

export function toStatus(a: AppliedLimit, s: LimitState | undefined): LimitStatusOut {
  // The info's fields one by one, not spread: a spread copies into an object that then grows a second store for the
  // fields after it (once per limit of every answer).
  const info = a.info;
  const out: LimitStatusOut = {
    name: info.name,
    scope: info.scope,
    kind: info.kind,
    unit: info.unit,
    product: info.product,
    limit: s?.limit ?? 0n,
    used: s?.used ?? 0n,
    remaining: s?.remaining ?? 0n,
    overage: s?.overage ?? 0n,
    overageTotal: s?.overageTotal ?? 0n,
    exceeded: s?.exceeded ?? false,
    sources: s?.sources === undefined ? [] : s.sources.map(sourceOut),
  };
  if (info.windowMs !== undefined) out.windowMs = info.windowMs;
  if (s?.resetAt !== undefined) out.resetAt = s.resetAt;
  return out;
}

function sourceOut(x: SourceState): LimitStatusOut["sources"][number] {
  const src: LimitStatusOut["sources"][number] = {
    kind: x.id === "base" ? "plan" : "grant",
    id: x.id,
    amount: x.amount,
    used: x.used,
    priority: x.priority,
    product: x.product,
  };
  if (x.expiresAt !== undefined) src.expiresAt = x.expiresAt;
  return src;
}

/** Splits the periodic base of a quota into the plan's part and the add-on's part, so every number is explained. */
export function explainSources(status: LimitStatusOut, plan: PlanSpec, sub: SubscriptionRecord): LimitStatusOut {
  const spec = plan.limits.find((l) => l.name === status.name);
  const base = status.sources.find((s) => s.id === "base");
  if (!spec || !base) return status;
  if (spec.kind === "budget") {
    base.kind = "credit";
    base.id = "deposits";
    return status;
  }
  const addOn = status.scope === "KEY" ? undefined : activeAddOn(spec, sub);
  base.id = plan.id;
  if (!addOn) return status;
  const planPart = base.amount - addOn.amount;
  const planUsed = base.used < planPart ? base.used : planPart;
  const idx = status.sources.indexOf(base);
  status.sources.splice(idx, 1, { ...base, amount: planPart, used: planUsed }, { ...base, kind: "add_on", id: addOn.id, amount: addOn.amount, used: base.used - planUsed });
  return status;
}
