import { describe, expect, it } from "vitest";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { CheckAndReserveRequestSchema, CheckAndReserveResponseSchema } from "../../src/gen/quota/v1/quota_pb.ts";
import { Decision, DenyReason, LimitKind, Mode, Scope } from "../../src/gen/quota/v1/types_pb.ts";
import { decodeCheckAndReserveRequest } from "../../src/transport/grpc/check-request-wire.ts";
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

describe("the dedicated CheckAndReserveRequest decoder", () => {
  const key = `qa_abcdefghijklmnop_${"A".repeat(43)}`;
  const request = (init: Parameters<typeof create<typeof CheckAndReserveRequestSchema>>[1]) => toBinary(CheckAndReserveRequestSchema, create(CheckAndReserveRequestSchema, init));
  const samples: Array<[string, Uint8Array]> = [
    ["empty", new Uint8Array(0)],
    ["the usual call", request({ apiKey: key, product: "api", method: "GetThing" })],
    ["every field it reads itself", request({ apiKey: key, keyId: "abcdefghijklmnop", product: "p.x-1", method: "a/b:c", cost: 0n, estimatedSpendMicros: 268_435_455n, idempotencyId: "id-1", mode: Mode.SHADOW })],
    ["an unknown mode", request({ apiKey: key, product: "api", method: "m", mode: 7 as Mode })],
    ["a cost past 4 varint bytes", request({ apiKey: key, product: "api", method: "m", cost: 268_435_456n })],
    ["a negative cost", request({ apiKey: key, product: "api", method: "m", cost: -1n })],
    ["meters", request({ apiKey: key, product: "api", method: "m", meters: { tokens: 5n, b: 0n } })],
    ["a reservation TTL", request({ apiKey: key, product: "api", method: "m", reservationTtl: { seconds: 5n, nanos: 0 } })],
    ["a non-ASCII string", request({ apiKey: key, product: "é€😀", method: "m" })],
    ["a string of 128 bytes and more", request({ apiKey: "x".repeat(300), product: "api", method: "m" })],
    ["a field repeated (the last one counts)", new Uint8Array([...request({ apiKey: key, product: "a" }), ...request({ product: "b", mode: Mode.CHECK_ONLY })])],
    ["an unknown field", new Uint8Array([...request({ apiKey: key, product: "api" }), 0x7a, 1, 0x41])],
  ];

  it("answers exactly the message fromBinary answers (itself or through fromBinary)", () => {
    for (const [name, bytes] of samples) {
      expect(decodeCheckAndReserveRequest(bytes), name).toStrictEqual(fromBinary(CheckAndReserveRequestSchema, bytes));
      expect(decodeCheckAndReserveRequest(Buffer.from(bytes)), `${name} (a Buffer)`).toStrictEqual(fromBinary(CheckAndReserveRequestSchema, Buffer.from(bytes)));
    }
  });

  it("fails as fromBinary fails on malformed bytes", () => {
    const bytes = request({ apiKey: key, product: "api", method: "m", cost: 300n });
    for (const broken of [bytes.subarray(0, 10), bytes.subarray(0, bytes.length - 1), new Uint8Array([0x0a, 0x05, 0x41]), new Uint8Array([0x28, 0x80]), new Uint8Array([0x00]), new Uint8Array([0x0b])]) {
      let expected: unknown;
      try {
        fromBinary(CheckAndReserveRequestSchema, broken);
      } catch (e) {
        expected = e;
      }
      expect(expected, `bytes ${[...broken]}`).toBeInstanceOf(Error);
      expect(() => decodeCheckAndReserveRequest(broken)).toThrow((expected as Error).message);
    }
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
