import { describe, expect, it } from "vitest";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { CheckAndReserveResponseSchema } from "../../src/gen/quota/v1/quota_pb.ts";
import { Decision, DenyReason, LimitKind, Scope } from "../../src/gen/quota/v1/types_pb.ts";
import { encodeCheckAndReserveResponse } from "../../src/transport/grpc/check-response-wire.ts";
import { newReservationId, parseReservationId } from "../../src/core/ids.ts";
import { callPlanFor, limitsForCall, withAmounts } from "../../src/core/limits.ts";
import { parsePlan } from "../../src/core/plan.ts";

describe("the dedicated CheckAndReserveResponse encoder", () => {
  const samples = [
    create(CheckAndReserveResponseSchema, {}),
    create(CheckAndReserveResponseSchema, {
      decision: Decision.ALLOWED,
      reservationId: "r~acct-1~abcdefghijklmnop~AAAAAAAAAAAAAAAAAAAAAA",
      limits: [
        {
          name: "monthly", scope: Scope.SUBSCRIPTION, kind: LimitKind.QUOTA, unit: "requests", limit: 1_000_000_000_000n, used: 10n,
          remaining: 999_999_999_990n, resetsAt: { seconds: 1_790_000_000n, nanos: 123_000_000 }, window: { seconds: 2_592_000n, nanos: 0 },
          overageTotal: 3n, product: "api",
          sources: [
            { kind: "plan", id: "base", amount: 5n, used: 2n, priority: 0, product: "" },
            { kind: "grant", id: "g_1", amount: 9_007_199_254_740_993n, used: 0n, priority: -3, product: "é€😀", expiresAt: { seconds: 1n, nanos: 0 } },
          ],
        },
        { name: "rps", scope: Scope.KEY, kind: LimitKind.RATE, unit: "requests", limit: 1_000_000n, used: 0n, remaining: 1_000_000n, exceeded: true, overage: -1n },
        { name: "in-flight", scope: Scope.KEY, kind: LimitKind.CONCURRENCY, unit: "calls_in_flight", limit: 7n },
      ],
      headers: { "RateLimit-Policy": '"monthly";q=1000000000000;w=2592000', RateLimit: '"monthly";r=5;t=1', "X-Ünicode": "ü" },
      cost: 10n,
      reservedSpendMicros: -5n,
      overage: true,
      failOpen: true,
      replayed: true,
      deniedLimit: "rps",
    }),
    create(CheckAndReserveResponseSchema, {
      decision: Decision.DENIED,
      reason: DenyReason.RATE_LIMITED,
      shadowReason: DenyReason.QUOTA_EXHAUSTED,
      retryAfter: { seconds: 0n, nanos: 250_000_000 },
      availableAt: { seconds: 1_800_000_000n, nanos: 0 },
      headers: { "Retry-After": "1" },
    }),
  ];

  it("writes exactly the bytes toBinary writes", () => {
    for (const m of samples) {
      const ours = encodeCheckAndReserveResponse(m);
      expect(Buffer.from(ours).toString("hex")).toBe(Buffer.from(toBinary(CheckAndReserveResponseSchema, m)).toString("hex"));
      expect(fromBinary(CheckAndReserveResponseSchema, ours)).toEqual(m);
    }
  });

  it("keeps unknown fields (through toBinary)", () => {
    const m = fromBinary(CheckAndReserveResponseSchema, new Uint8Array([...toBinary(CheckAndReserveResponseSchema, samples[1]!), 0xf8, 0x06, 0x01]));
    expect(m.$unknown?.length).toBe(1);
    expect(Buffer.from(encodeCheckAndReserveResponse(m)).equals(Buffer.from(toBinary(CheckAndReserveResponseSchema, m)))).toBe(true);
  });
});

describe("reservation ids", () => {
  it("keep the r~<account>~<key>~<22 chars> shape and are unique", () => {
    const seen = new Set<string>();
    for (let i = 0; i < 10_000; i++) {
      const id = newReservationId("acct_1", "abcdefghijklmnop");
      expect(parseReservationId(id)).toEqual({ accountId: "acct_1", keyId: "abcdefghijklmnop" });
      seen.add(id);
    }
    expect(seen.size).toBe(10_000);
  });
});

describe("the per key-context call plan", () => {
  const plan = parsePlan({
    id: "p", name: "p", methods: { default: 3 },
    limits: [
      { name: "monthly", kind: "quota", limit: 100, period: "monthly" },
      { name: "daily", kind: "quota", limit: 10, period: "daily" },
      { name: "tokens", kind: "quota", limit: 1000, period: "daily", meter: "tokens" },
      { name: "rps", kind: "rate", scope: "key", limit: 5, window: "1s" },
    ],
  });
  const start = Date.parse("2026-01-31T10:00:00Z");
  const sub = { id: "sub_1", accountId: "a", planId: "p", startsAt: new Date(start), endsAt: null, accessBlocks: [], addOns: {}, status: "active" } as never;
  const key = { id: "abcdefghijklmnop", accountId: "a", subscriptionId: "sub_1", name: "k", secretHash: "", status: "active", owner: false, overage: false, subLimits: { daily: 4n }, expiresAt: null, createdAt: new Date(start) } as never;
  const ctx = { plan: { spec: plan }, subscription: sub, key };
  const amounts = { units: 3n, spend: 0n, meters: { tokens: 42n } };

  it("answers what limitsForCall answers, across period boundaries and back", () => {
    const times = ["2026-02-01T09:00:00Z", "2026-02-01T10:00:00Z", "2026-02-28T09:59:59Z", "2026-02-28T10:00:00Z", "2026-02-01T12:00:00Z"].map(Date.parse);
    for (const now of times) {
      expect(withAmounts(callPlanFor(ctx, "api", now).limits, amounts)).toEqual(limitsForCall(plan, sub, key, "api", amounts, now));
    }
  });

  it("is reused within a period and recomputed for another context", () => {
    const now = Date.parse("2026-02-03T12:00:00Z");
    const a = callPlanFor(ctx, "api", now);
    expect(callPlanFor(ctx, "api", now + 60_000)).toBe(a);
    expect(callPlanFor({ ...ctx }, "api", now)).not.toBe(a);
  });

  it("keeps one plan per product of a context: a second product neither replaces the first nor borrows its limits", () => {
    const byProduct = parsePlan({
      id: "p2", name: "p2", methods: { default: 3 },
      limits: [
        { name: "monthly", kind: "quota", limit: 100, period: "monthly" },
        { name: "search-daily", kind: "quota", limit: 10, period: "daily", product: "search" },
      ],
    });
    const c = { plan: { spec: byProduct }, subscription: sub, key };
    const now = Date.parse("2026-02-03T12:00:00Z");
    const api = callPlanFor(c, "api", now);
    const search = callPlanFor(c, "search", now);
    expect(api.limits.map((l) => l.info.name)).toEqual(["monthly"]);
    expect(search.limits.map((l) => l.info.name)).toEqual(["monthly", "search-daily"]);
    expect(callPlanFor(c, "api", now + 1)).toBe(api);
    expect(callPlanFor(c, "search", now + 1)).toBe(search);
    const other = callPlanFor(c, "other", now);
    expect(other.limits.map((l) => l.info.name)).toEqual(["monthly"]);
    expect(callPlanFor(c, "api", now + 2)).toBe(api);
    expect(callPlanFor(c, "search", now + 2)).toBe(search);
    // Past the day's boundary the daily limit's plan is recomputed, the others' products keep theirs.
    const tomorrow = Date.parse("2026-02-04T12:00:00Z");
    expect(callPlanFor(c, "search", tomorrow)).not.toBe(search);
    expect(withAmounts(callPlanFor(c, "search", tomorrow).limits, amounts)).toEqual(limitsForCall(byProduct, sub, key, "search", amounts, tomorrow));
  });
});
