/**
 * Protobuf messages <-> core values, for both APIs. Wire-range checks of well-known types live here (a Duration or
 * Timestamp the core cannot represent is INVALID_ARGUMENT naming the field); business rules stay in the core.
 */
import { create, protoInt64 } from "@bufbuild/protobuf";
import { durationMs, timestampDate, type Duration, type Timestamp } from "@bufbuild/protobuf/wkt";
import { PlanSummarySchema, SubscriptionSchema } from "../gen/quota/v1/admin_pb.ts";
import { GrantSchema, KeyViewSchema } from "../gen/quota/v1/quota_pb.ts";
import { DenyReason, LimitKind, Mode, MoneySchema, Scope, type CapacitySource, type LimitStatus, type Money } from "../gen/quota/v1/types_pb.ts";
import { InvalidArgumentError } from "../core/errors.ts";
import type { LimitStatusOut } from "../core/limit-status.ts";
import { microsToMoney } from "../core/money.ts";
import type { GrantRecord, KeyRecord, SubscriptionRecord } from "../core/ports.ts";
import { keyView, type GrantOut, type KeyViewOut } from "../core/views.ts";

/** timestampFromMs without create()'s walk over the schema (every answer carries a few). */
export const ts = (ms: number | undefined): Timestamp | undefined => {
  if (ms === undefined) return undefined;
  const seconds = Math.floor(ms / 1000);
  return { $typeName: "google.protobuf.Timestamp", seconds: protoInt64.parse(seconds), nanos: (ms - seconds * 1000) * 1_000_000 };
};
export const dur = (ms: number | undefined): Duration | undefined => {
  if (ms === undefined) return undefined;
  return { $typeName: "google.protobuf.Duration", seconds: BigInt(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1_000_000 };
};
export const money = (micros: bigint): Money => create(MoneySchema, microsToMoney(micros));
const SCOPE = { KEY: Scope.KEY, SUBSCRIPTION: Scope.SUBSCRIPTION, ACCOUNT: Scope.ACCOUNT } as const;
const KIND = { RATE: LimitKind.RATE, QUOTA: LimitKind.QUOTA, CONCURRENCY: LimitKind.CONCURRENCY, BUDGET: LimitKind.BUDGET, ACCESS_WINDOW: LimitKind.ACCESS_WINDOW } as const;

export function limitStatus(l: LimitStatusOut): LimitStatus {
  return {
    $typeName: "quota.v1.LimitStatus",
    name: l.name,
    scope: SCOPE[l.scope],
    kind: KIND[l.kind],
    unit: l.unit,
    limit: l.limit,
    used: l.used,
    remaining: l.remaining,
    resetsAt: ts(l.resetAt),
    window: dur(l.windowMs),
    overage: l.overage,
    overageTotal: l.overageTotal,
    exceeded: l.exceeded,
    product: l.product,
    sources: l.sources.map(capacitySource),
  };
}

function capacitySource(s: LimitStatusOut["sources"][number]): CapacitySource {
  return {
    $typeName: "quota.v1.CapacitySource",
    kind: s.kind,
    id: s.id,
    amount: s.amount,
    used: s.used,
    expiresAt: ts(s.expiresAt),
    priority: s.priority,
    product: s.product,
  };
}

export function reason(r: string | undefined): DenyReason {
  return r ? (DenyReason as Record<string, DenyReason>)[r] ?? DenyReason.DENY_REASON_UNSPECIFIED : DenyReason.DENY_REASON_UNSPECIFIED;
}

export function mode(m: Mode): "ENFORCE" | "CHECK_ONLY" | "SHADOW" {
  switch (m) {
    case Mode.MODE_UNSPECIFIED:
    case Mode.ENFORCE:
      return "ENFORCE";
    case Mode.CHECK_ONLY:
      return "CHECK_ONLY";
    case Mode.SHADOW:
      return "SHADOW";
    default:
      throw new InvalidArgumentError("mode", `unknown value ${m}`);
  }
}

/** google.protobuf.Duration's own range: ±315,576,000,000 s, |nanos| <= 999,999,999, seconds and nanos of one sign. */
const DURATION_MAX_SECONDS = 315_576_000_000n;
/** google.protobuf.Timestamp's own range: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999999Z, nanos 0..999,999,999. */
const TIMESTAMP_MIN_SECONDS = -62_135_596_800n;
const TIMESTAMP_MAX_SECONDS = 253_402_300_799n;
const NANOS_MAX = 999_999_999;

/** A request Duration as ms; anything protobuf itself does not allow is INVALID_ARGUMENT naming the field. */
export function durationField(field: string, d: Duration | undefined): number | undefined {
  if (!d) return undefined;
  if (d.seconds > DURATION_MAX_SECONDS || d.seconds < -DURATION_MAX_SECONDS || d.nanos > NANOS_MAX || d.nanos < -NANOS_MAX || (d.seconds > 0n && d.nanos < 0) || (d.seconds < 0n && d.nanos > 0)) {
    throw new InvalidArgumentError(field, "is not a valid Duration (seconds within ±315576000000, nanos within ±999999999 and of the same sign)");
  }
  // Only a range guard before converting to a number; the core checks the real bounds (1s..1h).
  if (d.seconds < 0n || d.nanos < 0 || d.seconds > 86_400n) throw new InvalidArgumentError(field, "must be between 1s and 1h");
  return durationMs(d);
}

/** A request Timestamp as ms; outside protobuf's range, or before 1970 (no valid time here is), INVALID_ARGUMENT. */
export function timestampField(field: string, t: Timestamp | undefined): number | undefined {
  if (!t) return undefined;
  if (t.seconds < TIMESTAMP_MIN_SECONDS || t.seconds > TIMESTAMP_MAX_SECONDS || t.nanos < 0 || t.nanos > NANOS_MAX) {
    throw new InvalidArgumentError(field, "is not a valid Timestamp (0001-01-01 to 9999-12-31, nanos 0 to 999999999)");
  }
  if (t.seconds < 0n) throw new InvalidArgumentError(field, "is out of range (before 1970)");
  return timestampDate(t).getTime();
}

export function meters(m: { [k: string]: bigint }): Record<string, bigint> {
  // Most calls send none: then no entry array. (A protobuf map is a plain object: nothing enumerable inherited.)
  for (const _ in m) return Object.fromEntries(Object.entries(m));
  return {};
}

export function grant(g: GrantOut | GrantRecord) {
  const out = "limitName" in g
    ? { id: g.id, subscriptionId: g.subscriptionId, limit: g.limitName, product: g.product, amount: g.amount, priority: g.priority, validFrom: g.validFrom.getTime(), validUntil: g.validUntil?.getTime(), source: g.source }
    : g;
  return create(GrantSchema, { ...out, validFrom: ts(out.validFrom), validUntil: ts(out.validUntil) });
}

export function keyMessage(k: KeyViewOut | KeyRecord) {
  // Admin listings: "expired" is judged by this process's clock (the data plane uses the injected one).
  const v = "secretHash" in k ? keyView(k, Date.now()) : k;
  return create(KeyViewSchema, { ...v, createdAt: ts(v.createdAt) });
}

export function planSummary(p: { id: string; name: string; version: number; spec: unknown }) {
  return create(PlanSummarySchema, { id: p.id, name: p.name, version: p.version, specJson: JSON.stringify(p.spec, (_k, v) => (typeof v === "bigint" ? Number(v) : v)) });
}

export function subscription(s: SubscriptionRecord) {
  return create(SubscriptionSchema, {
    id: s.id,
    accountId: s.accountId,
    planId: s.planId,
    startsAt: ts(s.startsAt.getTime()),
    endsAt: ts(s.endsAt?.getTime()),
    accessBlocks: s.accessBlocks,
    addOns: s.addOns,
    status: s.status,
  });
}
