/**
 * Plans: the declarative description of a product's limits, weights, prices and policies. Loaded from a plans
 * file (`quota-authority plans apply -f FILE`) or the admin API; validated here; stored in Postgres as JSON.
 * The format is documented in docs/plans.md; examples/plans/*.yaml has one file per product.
 */
import { parse as parseYaml } from "yaml";
import { z } from "zod";
import { InvalidArgumentError } from "./errors.ts";
import { parseDecimalMicros } from "./money.ts";
import { NAME_RE } from "./validation.ts";

const name = z.string().regex(NAME_RE, "must be 1-63 characters of a-z 0-9 _ . - starting with a letter or digit");
const money = z.string().regex(/^\d{1,12}(\.\d{1,6})?$/, "must be a decimal amount in USD with at most 6 decimals, e.g. \"1.50\"");
/** A whole count 1..1e15 (numbers or decimal strings; above 1e15 Redis' doubles would lose precision). */
const count = z
  .union([z.number().int(), z.string().regex(/^\d{1,16}$/, "must be a whole number")])
  .transform((v) => BigInt(v))
  .refine((v) => v >= 1n && v <= 1_000_000_000_000_000n, "must be between 1 and 1e15");
/** Like count, but 0 is allowed (a quota whose capacity comes only from grants). */
const countOrZero = z
  .union([z.number().int(), z.string().regex(/^\d{1,16}$/, "must be a whole number")])
  .transform((v) => BigInt(v))
  .refine((v) => v >= 0n && v <= 1_000_000_000_000_000n, "must be between 0 and 1e15");
const duration = z
  .string()
  .regex(/^\d+(ms|s|m|h|d)$/, "must be a duration like 500ms, 1s, 1m, 1h, 1d")
  .refine((t) => parseDuration(t) > 0, "must be longer than zero");

export function parseDuration(text: string): number {
  const m = /^(\d+)(ms|s|m|h|d)$/.exec(text)!;
  const mult = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as "ms"];
  return Number(m[1]) * mult;
}

const reservationTtls = new WeakMap<object, number>();
/** A plan's reservation TTL in ms, parsed once per plan spec (specs are not mutated once loaded): it is read on
 * every CheckAndReserve. */
export function reservationTtlMs(plan: { reservation: { ttl: string } }): number {
  let ms = reservationTtls.get(plan);
  if (ms === undefined) reservationTtls.set(plan, (ms = parseDuration(plan.reservation.ttl)));
  return ms;
}

const addOnPackage = z.strictObject({
  id: name,
  /** Units added to the limit per period (e.g. +25,000 per day). */
  amount: count,
  /** Monthly price; default: the limit's addOnPrice rate times the amount. */
  monthlyPrice: money.optional(),
});

const limitSpec = z
  .strictObject({
    name,
    kind: z.enum(["rate", "quota", "concurrency", "budget"]),
    scope: z.enum(["key", "subscription", "account"]).default("subscription"),
    /** What is counted: requests (1 per call), units (method weights), spend (micro-USD), or a custom meter. */
    meter: z.string().regex(/^[a-z][a-z0-9_]{0,31}$/).optional(),
    /** rate/concurrency: the maximum; quota: the plan base per period (0 allowed: grants only); budget: not used. */
    limit: countOrZero.optional(),
    /** rate: the sliding window, e.g. 1s, 1m. */
    window: duration.optional(),
    /** quota: daily and monthly reset on the subscription anniversary; rolling-24h is a sliding day; never. */
    period: z.enum(["daily", "monthly", "rolling-24h", "never"]).optional(),
    /** Only calls to this product count against the limit. */
    product: name.optional(),
    /** Burn priority of the plan base relative to grants (higher burns first). Default 100 (base first). */
    basePriority: z.number().int().min(-1000).max(1000).default(100),
    /** Recurring add-on packages that raise this limit (one active at a time). */
    addOns: z.array(addOnPackage).max(20).optional(),
    /** Price of add-on capacity: `amount` USD per month for every `per` units per period. */
    addOnPrice: z.strictObject({ per: count, amount: money }).optional(),
  })
  .superRefine((l, ctx) => {
    const need = (field: keyof typeof l, why: string) => {
      if (l[field] === undefined) ctx.addIssue({ code: "custom", path: [field], message: `is required for ${why}` });
    };
    const forbid = (field: keyof typeof l, why: string) => {
      if (l[field] !== undefined) ctx.addIssue({ code: "custom", path: [field], message: `does not apply to ${why}` });
    };
    if (l.kind !== "quota") {
      forbid("period", `${l.kind} limits`);
      forbid("addOns", `${l.kind} limits`);
      forbid("addOnPrice", `${l.kind} limits`);
    }
    if (l.kind !== "rate") forbid("window", `${l.kind} limits`);
    if (l.kind === "rate" || l.kind === "concurrency" || l.kind === "budget") forbid("meter", `${l.kind} limits (they count ${l.kind === "budget" ? "spend" : "calls"})`);
    if (l.kind === "budget") forbid("limit", "budget limits (the credit deposits are the budget)");
    if ((l.kind === "rate" || l.kind === "concurrency") && l.limit === 0n) {
      ctx.addIssue({ code: "custom", path: ["limit"], message: "must be at least 1 (0 would deny every call)" });
    }
    if (l.kind === "rate") {
      need("limit", "rate limits");
      need("window", "rate limits");
    }
    if (l.kind === "concurrency") need("limit", "concurrency limits");
    if (l.kind === "quota") {
      need("limit", "quota limits");
      need("period", "quota limits");
    }
    if (l.kind === "budget" && l.scope !== "account") {
      ctx.addIssue({ code: "custom", path: ["scope"], message: "budget limits are account-wide (the credit balance is shared)" });
    }
  });

const planSpec = z
  .strictObject({
    id: name,
    name: z.string().min(1).max(200),
    description: z.string().max(2000).optional(),
    /** The products (APIs) the plan includes; empty or absent = any product. */
    products: z.array(name).max(200).optional(),
    /** Cost weights in units per method. */
    methods: z
      .strictObject({
        default: z.number().int().min(0).max(1_000_000).default(1),
        costs: z.record(z.string().regex(/^[A-Za-z0-9_.:/-]{1,128}$/), z.number().int().min(0).max(1_000_000)).default({}),
      })
      .default({ default: 1, costs: {} }),
    limits: z.array(limitSpec).min(1).max(50),
    /** Quota top-ups: which limit they raise, in what increments, at what wallet price. */
    topUp: z
      .strictObject({
        limit: name,
        increment: count.default(1n),
        /** `units` per `amount` USD, e.g. { units: 100, amount: "1.00" } = 100 requests per $1. Required: a top-up
         * without a price would be free; operators grant free quota with the admin Adjust call instead. */
        price: z.strictObject({ units: count, amount: money }),
        /** Grants burn after the base by default. */
        priority: z.number().int().min(-1000).max(1000).default(0),
      })
      .optional(),
    /** Pricing of usage for budget (credit) limits: per call and per unit of named meters. */
    pricing: z
      .strictObject({
        perCall: money.default("0"),
        perMeter: z.record(z.string().regex(/^[a-z][a-z0-9_]{0,31}$/), money).default({}),
      })
      .optional(),
    credit: z.strictObject({ minimumDeposit: money.default("0") }).optional(),
    /** Daily access blocks (UTC) for time-block subscriptions: name -> [startHour, endHour). */
    accessBlocks: z
      .strictObject({
        blocks: z.record(name, z.tuple([z.number().int().min(0).max(23), z.number().int().min(1).max(24)])),
        min: z.number().int().min(1).default(1),
        max: z.number().int().min(1).default(3),
      })
      .optional(),
    /** Fixed subscription length (time-block passes), e.g. 30d. Default: open-ended. */
    subscriptionLength: duration.optional(),
    reservation: z
      .strictObject({
        ttl: duration.default("30s"),
        /** What happens to a reservation that is never released: charge the reserved amount, or refund it. */
        onExpiry: z.enum(["charge", "refund"]).default("charge"),
      })
      .default({ ttl: "30s", onExpiry: "charge" }),
    /** When the counter store is unreachable: deny (closed) or admit flagged (open). */
    failureMode: z.enum(["open", "closed"]).default("closed"),
  })
  .superRefine((p, ctx) => {
    const names = new Set<string>();
    p.limits.forEach((l, i) => {
      const key = `${l.scope}:${l.name}`;
      if (names.has(key)) ctx.addIssue({ code: "custom", path: ["limits", i, "name"], message: `duplicate limit ${l.name} in scope ${l.scope}` });
      names.add(key);
    });
    if (p.topUp && !p.limits.some((l) => l.name === p.topUp!.limit && l.kind === "quota" && l.scope !== "key")) {
      ctx.addIssue({ code: "custom", path: ["topUp", "limit"], message: `must name a subscription or account quota limit of the plan` });
    }
    if (p.limits.some((l) => l.kind === "budget") && !p.pricing) {
      ctx.addIssue({ code: "custom", path: ["pricing"], message: "is required when the plan has a budget limit" });
    }
    if (p.topUp) {
      const perMicros = parseDecimalMicros("topUp.price.amount", p.topUp.price.amount);
      if (perMicros <= 0n) ctx.addIssue({ code: "custom", path: ["topUp", "price", "amount"], message: "must be greater than zero" });
      else if ((p.topUp.increment * perMicros) % p.topUp.price.units !== 0n) {
        ctx.addIssue({ code: "custom", path: ["topUp", "increment"], message: "an increment must cost a whole number of micro-dollars at this price" });
      }
    }
    if (p.accessBlocks && p.accessBlocks.min > p.accessBlocks.max) {
      ctx.addIssue({ code: "custom", path: ["accessBlocks", "min"], message: "must not be greater than max" });
    }
    if (p.accessBlocks) {
      for (const [n, [s, e]] of Object.entries(p.accessBlocks.blocks)) {
        if (e <= s) ctx.addIssue({ code: "custom", path: ["accessBlocks", "blocks", n], message: "end hour must be after start hour" });
      }
    }
  });

export type PlanSpec = z.infer<typeof planSpec>;
export type LimitSpec = PlanSpec["limits"][number];

const plansFile = z.strictObject({ plans: z.array(planSpec).min(1).max(500) });

/** Validates one plan; errors name the field path. */
export function parsePlan(input: unknown, path = "plan"): PlanSpec {
  const r = planSpec.safeParse(input);
  if (!r.success) throw toInvalid(r.error, path);
  return r.data;
}

/** Parses a plans document (YAML or JSON) into validated plans; every problem is listed at once. */
export function parsePlansDocument(text: string, source = "plans"): PlanSpec[] {
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (e) {
    throw new InvalidArgumentError(source, `not valid YAML/JSON: ${(e as Error).message.split("\n")[0]}`);
  }
  const r = plansFile.safeParse(doc);
  if (!r.success) throw toInvalid(r.error, source);
  const ids = new Set<string>();
  r.data.plans.forEach((p, i) => {
    if (ids.has(p.id)) throw new InvalidArgumentError(`${source}.plans[${i}].id`, `duplicate plan id ${p.id}`);
    ids.add(p.id);
  });
  return r.data.plans;
}

function toInvalid(error: z.ZodError, root: string): InvalidArgumentError {
  const pathOf = (path: PropertyKey[]) => path.map((p, n) => (typeof p === "number" ? `[${p}]` : n === 0 ? String(p) : `.${String(p)}`)).join("");
  const first = error.issues[0]!;
  const err = new InvalidArgumentError(pathOf(first.path) || root, first.message);
  // Every problem at once, each with its field path: "plans.yaml: plans[0].limits[1].window: must be ...".
  err.message = `${root}: ${error.issues.map((i) => `${pathOf(i.path) || "(document)"}: ${i.message}`).join("; ")}`;
  return err;
}

/** The counting meter of a limit: its own, or requests for rate/concurrency, units for quota, spend for budget. */
export function meterOf(l: LimitSpec): string {
  if (l.kind === "budget") return "spend";
  if (l.kind === "rate" || l.kind === "concurrency") return "calls";
  return l.meter ?? "units";
}

/** Monthly price in micros of an add-on package of limit `l`. */
export function addOnMonthlyPrice(l: LimitSpec, pkg: NonNullable<LimitSpec["addOns"]>[number]): bigint {
  if (pkg.monthlyPrice) return parseDecimalMicros("monthlyPrice", pkg.monthlyPrice);
  if (!l.addOnPrice) return 0n;
  return (pkg.amount * parseDecimalMicros("addOnPrice.amount", l.addOnPrice.amount)) / l.addOnPrice.per;
}
