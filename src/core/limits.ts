/**
 * From configuration to counters: which limits apply to a call (and with what amounts), and what capacity each
 * limit has (plan base + add-ons + active grants, or the credit deposits for budgets).
 */
import type { CapacityEntry, CounterLimit, Gate, Period } from "./counter-store.ts";
import { DAY_MS, fixedBounds, monthlyCycle } from "./periods.ts";
import { meterOf, parseDuration, type LimitSpec, type PlanSpec } from "./plan.ts";
import { parseDecimalMicros } from "./money.ts";
import type { AccountConfig, KeyRecord, SubscriptionRecord } from "./ports.ts";
import { own } from "./validation.ts";
import type { HeaderTemplate } from "./headers.ts";

/** Rolling windows are counted in 15-minute buckets: a window over-counts by at most one bucket of usage. */
export const ROLLING_BUCKET_MS = 15 * 60 * 1000;

export type ScopeName = "KEY" | "SUBSCRIPTION" | "ACCOUNT";
export type KindName = "RATE" | "QUOTA" | "CONCURRENCY" | "BUDGET" | "ACCESS_WINDOW";

/** What the answer says about a limit besides its counters. toStatus (limit-status.ts) copies these fields one by one (not a
 * spread, on the hot path): a field added here is added there too. */
export interface LimitInfo {
  name: string;
  scope: ScopeName;
  kind: KindName;
  unit: string;
  product: string;
  windowMs?: number;
}

export interface AppliedLimit {
  counter: CounterLimit;
  /** Shared by every call of the plan version (infoOf): never mutated. */
  readonly info: Readonly<LimitInfo>;
}

export interface CallAmounts {
  units: bigint;
  spend: bigint;
  meters: Record<string, bigint>;
}

/** A limit's counter id. Joined, not concatenated: `join` makes one flat string, where a template literal makes a
 * tree of concatenation nodes that keeps its parts (ids live as long as a cached key's call plan). */
export function limitId(scope: string, owner: string, name: string): string {
  return scope === "account" ? ["a:", name].join("") : [scope === "key" ? "k:" : "s:", owner, ":", name].join("");
}

function unitOf(l: LimitSpec): string {
  const meter = meterOf(l);
  if (l.kind === "budget") return "usd_micros";
  if (l.kind === "concurrency") return "calls_in_flight";
  if (meter === "calls" || meter === "requests") return "requests";
  return meter;
}

function amountFor(l: LimitSpec, a: CallAmounts): bigint {
  const meter = meterOf(l);
  if (meter === "calls" || meter === "requests") return 1n;
  if (meter === "units") return a.units;
  if (meter === "spend") return a.spend;
  return own(a.meters, meter) ?? 0n;
}

function periodOf(l: LimitSpec, anchor: number, now: number): Period {
  switch (l.period) {
    case "daily":
    case "monthly":
      return { type: "fixed", bounds: fixedBounds(l.period, anchor, now) };
    case "rolling-24h":
      return { type: "rolling", windowMs: DAY_MS, bucketMs: ROLLING_BUCKET_MS };
    default:
      return { type: "none" };
  }
}

function windowOf(l: LimitSpec): number | undefined {
  if (l.kind === "rate") return parseDuration(l.window!);
  if (l.period === "daily" || l.period === "rolling-24h") return DAY_MS;
  if (l.period === "monthly") return 30 * DAY_MS;
  return undefined;
}

export function blocksOf(plan: PlanSpec, sub: SubscriptionRecord): Array<[number, number]> {
  const defs = plan.accessBlocks?.blocks ?? {};
  return sub.accessBlocks.flatMap((b): Array<[number, number]> => {
    const block = own(defs, b);
    return block ? [[block[0] * 3_600_000, block[1] * 3_600_000]] : [];
  });
}

const ACCESS_WINDOW_INFO: LimitInfo = { name: "access-window", scope: "SUBSCRIPTION", kind: "ACCESS_WINDOW", unit: "requests", product: "" };

/** What the answer says of a limit (and of a key's sub-limit of it): it depends on the plan's limit alone, so it is
 * made once per plan version and shared by every call and cached key (never mutated). */
const infos = new WeakMap<LimitSpec, { own: LimitInfo; sub?: LimitInfo }>();
function infoOf(l: LimitSpec, subLimit = false): LimitInfo {
  let i = infos.get(l);
  if (!i) {
    const own: LimitInfo = {
      name: l.name,
      scope: l.scope === "key" ? "KEY" : l.scope === "account" ? "ACCOUNT" : "SUBSCRIPTION",
      kind: l.kind === "rate" ? "RATE" : l.kind === "quota" ? "QUOTA" : l.kind === "concurrency" ? "CONCURRENCY" : "BUDGET",
      unit: unitOf(l),
      product: l.product ?? "",
    };
    const w = windowOf(l);
    if (w !== undefined) own.windowMs = w;
    infos.set(l, (i = { own }));
  }
  if (!subLimit) return i.own;
  return (i.sub ??= { ...i.own, name: `${l.name}/key`, scope: "KEY" });
}

/** Every limit that applies to a call by `key` on `product`, with this call's amounts (all zero to peek). */
export function limitsForCall(
  plan: PlanSpec,
  sub: SubscriptionRecord,
  key: KeyRecord | undefined,
  product: string,
  amounts: CallAmounts,
  now: number,
  options: { allProducts?: boolean } = {},
): AppliedLimit[] {
  const out: AppliedLimit[] = [];
  const anchor = sub.startsAt.getTime();
  if (plan.accessBlocks && sub.accessBlocks.length > 0) {
    out.push({
      counter: { id: limitId("subscription", sub.id, "access-window"), kind: "WINDOW", meter: "calls", amount: 1n, blocks: blocksOf(plan, sub) },
      info: ACCESS_WINDOW_INFO,
    });
  }
  for (const l of plan.limits) {
    if (l.product && l.product !== product && !options.allProducts) continue;
    if (l.scope === "key" && !key) continue;
    const owner = l.scope === "key" ? key!.id : sub.id;
    const info = infoOf(l);
    const counter: CounterLimit = {
      id: limitId(l.scope, owner, l.name),
      kind: info.kind === "ACCESS_WINDOW" ? "WINDOW" : info.kind,
      meter: meterOf(l),
      amount: amountFor(l, amounts),
    };
    if (l.kind === "rate") {
      counter.limit = l.limit!;
      counter.windowMs = parseDuration(l.window!);
    } else if (l.kind === "concurrency") {
      counter.limit = l.limit!;
    } else {
      counter.period = l.kind === "budget" ? { type: "none" } : periodOf(l, anchor, now);
      if (l.kind === "quota" && key?.overage) counter.overage = true;
      if (l.kind === "quota" && l.scope === "key") counter.limit = l.limit!;
    }
    out.push({ counter, info });
    // A key's own sub-limit of a shared quota: the same period and meter, a fixed capacity.
    const sub_ = key ? own(key.subLimits, l.name) : undefined;
    if (key && sub_ !== undefined && l.kind === "quota" && l.scope !== "key") {
      out.push({
        counter: { ...counter, id: limitId("key", key.id, `sub:${l.name}`), limit: sub_ },
        info: infoOf(l, true),
      });
    }
  }
  return out;
}

export function gatesFor(sub: SubscriptionRecord, key: KeyRecord | undefined): Gate[] {
  const gates: Gate[] = [];
  if (key?.expiresAt) gates.push({ reason: "KEY_EXPIRED", until: key.expiresAt.getTime() });
  gates.push({ reason: "SUBSCRIPTION_NOT_STARTED", from: sub.startsAt.getTime() });
  if (sub.endsAt) gates.push({ reason: "SUBSCRIPTION_ENDED", until: sub.endsAt.getTime() });
  return gates;
}

/** The add-on package active on limit `l` of a subscription, if any. */
export function activeAddOn(l: LimitSpec, sub: SubscriptionRecord) {
  const id = own(sub.addOns, l.name);
  return id ? l.addOns?.find((p) => p.id === id) : undefined;
}

/** Capacity of every counter-store-backed limit of an account, derived from the source of truth. */
export function capacityOf(config: Pick<AccountConfig, "subscriptions" | "plans" | "grants" | "wallets">): CapacityEntry[] {
  const entries = new Map<string, CapacityEntry>();
  const credit = config.wallets.find((w) => w.kind === "credit");
  for (const sub of config.subscriptions) {
    const plan = config.plans.get(sub.planId)?.spec;
    if (!plan) continue;
    for (const l of plan.limits) {
      if (l.kind === "budget") {
        const id = limitId("account", "", l.name);
        entries.set(id, { limitId: id, base: credit?.totalDeposited ?? 0n, basePriority: 0, grants: [] });
        continue;
      }
      if (l.kind !== "quota" || l.scope === "key") continue;
      const id = limitId(l.scope, sub.id, l.name);
      const addOn = activeAddOn(l, sub);
      const grants = config.grants
        .filter((g) => g.subscriptionId === sub.id && g.limitName === l.name)
        .map((g) => {
          const out: CapacityEntry["grants"][number] = {
            id: g.id,
            amount: g.amount,
            priority: g.priority,
            validFrom: g.validFrom.getTime(),
            seq: g.createdAt.getTime(),
            product: g.product,
          };
          if (g.validUntil) out.validUntil = g.validUntil.getTime();
          return out;
        });
      const existing = entries.get(id);
      entries.set(id, {
        limitId: id,
        base: l.limit! + (addOn?.amount ?? 0n),
        basePriority: l.basePriority,
        grants: [...(existing?.grants ?? []), ...grants],
      });
    }
  }
  return [...entries.values()];
}

/** The limit ids whose usage is durable (snapshotted to Postgres): quota and budget, including key sub-limits. */
export function durableLimitIds(config: AccountConfig): string[] {
  const ids = new Set<string>();
  for (const sub of config.subscriptions) {
    const plan = config.plans.get(sub.planId)?.spec;
    if (!plan) continue;
    for (const l of plan.limits) {
      if (l.kind !== "quota" && l.kind !== "budget") continue;
      if (l.scope === "key") {
        for (const k of config.keys) if (k.subscriptionId === sub.id) ids.add(limitId("key", k.id, l.name));
      } else {
        ids.add(limitId(l.scope, sub.id, l.name));
        for (const k of config.keys) {
          if (k.subscriptionId === sub.id && own(k.subLimits, l.name) !== undefined) ids.add(limitId("key", k.id, `sub:${l.name}`));
        }
      }
    }
  }
  return [...ids];
}

/** Spend in micro-USD of a call under the plan's pricing: per call plus per unit of each priced meter. */
export function priceOf(plan: PlanSpec, meters: Record<string, bigint>, calls: bigint): bigint {
  if (!plan.pricing) return 0n;
  const p = pricesOf(plan);
  let spend = calls * p.perCall;
  for (const [meter, price] of p.perMeter) spend += (own(meters, meter) ?? 0n) * price;
  return spend;
}

/** The plan's prices parsed once per plan spec (plan specs are not mutated once loaded). */
const parsedPrices = new WeakMap<PlanSpec, { perCall: bigint; perMeter: Array<[string, bigint]> }>();
function pricesOf(plan: PlanSpec) {
  let p = parsedPrices.get(plan);
  if (!p) {
    p = {
      perCall: parseDecimalMicros("pricing.perCall", plan.pricing!.perCall),
      perMeter: Object.entries(plan.pricing!.perMeter).map(([meter, price]) => [meter, parseDecimalMicros(`pricing.perMeter.${meter}`, price)]),
    };
    parsedPrices.set(plan, p);
  }
  return p;
}

/** The current monthly billing cycle of a subscription. */
export function cycleOf(sub: SubscriptionRecord, now: number) {
  return monthlyCycle(sub.startsAt.getTime(), now);
}

/**
 * What limitsForCall and gatesFor answer for one key context and product, computed once and reused by every call
 * until the next period boundary (`from <= now < until`): the hot path then only fills in this call's amounts.
 * Keyed by the KeyContext object, so a key, subscription or plan change (a new context from the KeyCache) starts
 * afresh and a dropped context is collected with its entries.
 */
export interface CallPlan {
  /** The applied limits with zero amounts (shared, never mutated). */
  limits: readonly AppliedLimit[];
  gates: readonly Gate[];
  hasBudget: boolean;
  from: number;
  until: number;
  /** The answer's header values that repeat from call to call (src/core/headers.ts). */
  headers: HeaderTemplate;
}

interface PlanContext {
  plan: { spec: PlanSpec };
  subscription: SubscriptionRecord;
  key: KeyRecord;
}

/** Products seen per context are caller input: past this many the context's map starts over (bounded memory). */
const MAX_PRODUCTS_PER_KEY = 64;
/** A context's call plans: the one product's itself while only one was asked for (most keys call one product; a Map
 * with its table costs ~300 bytes per cached key), a Map by product past that. */
type CallPlans = (CallPlan & { product: string }) | Map<string, CallPlan>;
const callPlans = new WeakMap<PlanContext, CallPlans>();
const ZERO: CallAmounts = { units: 0n, spend: 0n, meters: {} };

export function callPlanFor(ctx: PlanContext, product: string, now: number): CallPlan {
  const plans = callPlans.get(ctx);
  const cached = plans === undefined ? undefined : plans instanceof Map ? plans.get(product) : plans.product === product ? plans : undefined;
  if (cached && now >= cached.from && now < cached.until) return cached;
  const limits = limitsForCall(ctx.plan.spec, ctx.subscription, ctx.key, product, ZERO, now);
  let from = -Infinity;
  let until = Infinity;
  for (const a of limits) {
    const p = a.counter.period;
    if (p?.type !== "fixed") continue;
    if (p.bounds[1] > from) from = p.bounds[1];
    if (p.bounds[2] < until) until = p.bounds[2];
  }
  // Copies of their exact length: the arrays were grown by `push` (room for 17), and these live as long as the key.
  const plan: CallPlan & { product: string } = { limits: limits.slice(), gates: gatesFor(ctx.subscription, ctx.key).slice(), hasBudget: limits.some((a) => a.info.kind === "BUDGET"), from, until, product, headers: {} };
  if (plans === undefined || (!(plans instanceof Map) && plans.product === product)) {
    callPlans.set(ctx, plan);
  } else if (plans instanceof Map) {
    if (!cached && plans.size >= MAX_PRODUCTS_PER_KEY) plans.clear();
    plans.set(product, plan);
  } else {
    callPlans.set(ctx, new Map([[plans.product, plans], [product, plan]]));
  }
  return plan;
}

/** The plan's limits with this call's amounts (what limitsForCall answers for these amounts). */
export function withAmounts(limits: readonly AppliedLimit[], a: CallAmounts): AppliedLimit[] {
  const out: AppliedLimit[] = new Array(limits.length);
  for (let i = 0; i < limits.length; i++) {
    const l = limits[i]!;
    const meter = l.counter.meter;
    const amount = meter === "calls" || meter === "requests" ? 1n : meter === "units" ? a.units : meter === "spend" ? a.spend : (own(a.meters, meter) ?? 0n);
    out[i] = { counter: { ...l.counter, amount }, info: l.info };
  }
  return out;
}
