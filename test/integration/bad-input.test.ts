/**
 * Bad input to every RPC of QuotaService and QuotaAdminService, over grpc-js and Connect (HTTP/1.1 JSON): negative,
 * zero and huge numbers, empty and 100k-character strings, unknown and malformed ids, unknown enum values, bad
 * Money. Every answer must be INVALID_ARGUMENT naming the offending field, NOT_FOUND (or another typed error where the
 * input is well-formed but the state forbids it), or a typed denial — and NOTHING may change: GetLimits (used
 * counters, wallets, grants, keys), the ledger, posting totals, every table of the database and every Redis key of
 * the app are compared before and after each case.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { status } from "@grpc/grpc-js";
import pg from "pg";
import { Redis } from "ioredis";
import { Decision, DenyReason, Mode } from "../../src/gen/quota/v1/types_pb.ts";
import { Outcome } from "../../src/gen/quota/v1/quota_pb.ts";
import { startTestApp, type TestApp } from "../support/app.ts";
import { ADMIN, clients, codeOf, messageOf, reasonOf, type Clients, type Protocol } from "../support/clients.ts";
import { TEST_REDIS_URL } from "../support/env.ts";
import { applyPlans, deposit, seedAccount, type Seeded } from "../support/fixtures.ts";

// The rate window is an hour and the app's clock stands still, so nothing in the state moves by itself between two
// snapshots (Redis expires rate-limit keys in real time after their window).
const PLANS = `
plans:
  - id: bad-input
    name: Bad input target
    products: [api-one, api-two]
    methods: { default: 1, costs: { heavy: 5 } }
    limits:
      - { name: monthly, kind: quota, limit: 1000, period: monthly, addOns: [{ id: plus-100, amount: 100, monthlyPrice: "5.00" }] }
      - { name: rps, kind: rate, scope: key, limit: 1000, window: 1h }
      - { name: in-flight, kind: concurrency, scope: key, limit: 50 }
    topUp: { limit: monthly, increment: 100, price: { units: 100, amount: "1.00" } }
`;

const INT64_MAX = 9_223_372_036_854_775_807n;
const INT64_MIN = -9_223_372_036_854_775_808n;
const INT32_MAX = 2_147_483_647;
const ABOVE_1E15 = 1_000_000_000_000_001n;
/** 100k characters that are each allowed in ids, names and products: only the length is wrong. */
const LONG = "a".repeat(100_000);
/** Well-formed ids that exist nowhere (ids are checked for shape before lookup: these must reach the lookup). */
const UNKNOWN_KEY_ID = "aaaaaaaaaaaaaaaa";
const UNKNOWN_SUBSCRIPTION_ID = "sub_aaaaaaaaaaaaaaaa";
const usd = (units: bigint, nanos = 0, currencyCode = "USD") => ({ currencyCode, units, nanos });

let serial = 0;
/** A fresh idempotency key / request id / payment reference per attempt. */
const uniq = (p: string) => `${p}-${Date.now().toString(36)}-${++serial}`;

// ------------------------------------------------------------------ what an answer may be

type Want =
  | { kind: "invalid"; field: string }
  | { kind: "invalid-document"; path: string }
  | { kind: "code"; code: number; name: string; reason?: string }
  | { kind: "denied"; reason: DenyReason }
  | { kind: "ok"; what: string; check: (res: any) => boolean };

const invalid = (field: string): Want => ({ kind: "invalid", field });
/** ApplyPlans: INVALID_ARGUMENT for `document`, the message listing the problem at `path` inside the document. */
const invalidDocument = (path: string): Want => ({ kind: "invalid-document", path });
const code = (c: number, name: string, reason?: string): Want => ({ kind: "code", code: c, name, ...(reason ? { reason } : {}) });
const NOT_FOUND = code(status.NOT_FOUND, "NOT_FOUND");
const FAILED_PRECONDITION = code(status.FAILED_PRECONDITION, "FAILED_PRECONDITION");
const ALREADY_EXISTS = code(status.ALREADY_EXISTS, "ALREADY_EXISTS");
const PERMISSION_DENIED = code(status.PERMISSION_DENIED, "PERMISSION_DENIED");
const UNAUTHENTICATED = code(status.UNAUTHENTICATED, "UNAUTHENTICATED");
const denied = (reason: DenyReason): Want => ({ kind: "denied", reason });

/** True when `message` names `field` as the offending field: "field: ..." or a sub-path of it ("field.x: ...", "field[0]: ..."). */
function namesField(message: string, field: string): boolean {
  return message.split("; ").some((part) => part.startsWith(field) && [":", ".", "["].includes(part.charAt(field.length)));
}

type Got = { ok: true; res: any } | { ok: false; code: number | undefined; message: string; reason: string };

function matches(w: Want, g: Got): boolean {
  switch (w.kind) {
    case "invalid":
      return !g.ok && g.code === status.INVALID_ARGUMENT && namesField(g.message, w.field);
    case "invalid-document":
      return !g.ok && g.code === status.INVALID_ARGUMENT && g.message.startsWith("document: ") && namesField(g.message.slice("document: ".length), w.path);
    case "code":
      return !g.ok && g.code === w.code && (w.reason === undefined || g.reason === w.reason);
    case "denied":
      return g.ok && g.res.decision === Decision.DENIED && g.res.reason === w.reason && g.res.reservationId === "";
    case "ok":
      return g.ok && w.check(g.res);
  }
}

function describeWant(w: Want): string {
  switch (w.kind) {
    case "invalid":
      return `INVALID_ARGUMENT naming ${w.field}`;
    case "invalid-document":
      return `INVALID_ARGUMENT "document: ${w.path}: ..."`;
    case "code":
      return w.reason ? `${w.name} (x-error-reason ${w.reason})` : w.name;
    case "denied":
      return `DENIED ${nameOf(DenyReason, w.reason)}`;
    case "ok":
      return `OK: ${w.what}`;
  }
}

const STATUS_NAMES = Object.fromEntries(Object.entries(status).map(([k, v]) => [v, k]));
/** The name of a generated enum value (protobuf-es enums are plain objects without a reverse mapping). */
const nameOf = (e: Record<string, number>, v: number) => Object.keys(e).find((k) => e[k] === v) ?? String(v);
function describeGot(g: Got): string {
  if (!g.ok) return `${STATUS_NAMES[g.code ?? -1] ?? g.code}${g.reason ? ` (x-error-reason ${g.reason})` : ""} ${JSON.stringify(g.message.slice(0, 300))}`;
  const r = g.res;
  if (r && typeof r === "object" && "decision" in r) return `OK decision=${nameOf(Decision, r.decision)} reason=${nameOf(DenyReason, r.reason)} reservationId=${JSON.stringify(r.reservationId)}`;
  return `OK ${JSON.stringify(r, (_k, v) => (typeof v === "bigint" ? `${v}n` : v)).slice(0, 300)}`;
}

// ------------------------------------------------------------------ the cases

interface Ctx {
  s: Seeded;
  other: Seeded;
  /** An open (unreleased) reservation of `s`: bad Releases must leave it open. */
  openReservation: string;
  /** The payment reference already credited to `s`. */
  seedReference: string;
}

interface Case {
  name: string;
  call: (c: Clients, x: Ctx) => Promise<unknown>;
  want: Want | Want[];
}

type Groups = Record<string, Case[]>;

const checkBase = (x: Ctx) => ({ apiKey: x.s.apiKey, product: "api-one", method: "get" });
const releaseBase = (x: Ctx) => ({ reservationId: x.openReservation, outcome: Outcome.COMMIT });
const quotaTopUp = (x: Ctx, lines: object[], extra: object = {}) => ({
  apiKey: x.s.apiKey,
  idempotencyKey: uniq("bad-topup"),
  target: { case: "quota" as const, value: { lines: lines as never } },
  funding: { case: "fromWallet" as const, value: {} },
  ...extra,
});
/** Add-ons are invoiced monthly: the request carries no funding. */
const addOnTopUp = (x: Ctx, packageId: string, limit: string) => ({
  apiKey: x.s.apiKey,
  idempotencyKey: uniq("bad-addon"),
  target: { case: "addOn" as const, value: { packageId, limit } },
});
const walletTopUp = (x: Ctx, amount: object | undefined, payment: object = {}) => ({
  accountId: x.s.accountId,
  idempotencyKey: uniq("bad-wallet"),
  target: { case: "wallet" as const, value: amount ? { amount: amount as never } : {} },
  funding: { case: "external" as const, value: { reference: uniq("ref"), amount: usd(1n), provider: "test", ...payment } },
});
const depositBase = (x: Ctx, payment: object = {}) => ({
  accountId: x.s.accountId,
  wallet: "prepaid",
  payment: { reference: uniq("dep"), amount: usd(1n), provider: "test", ...payment },
});
const quotaAdjust = (x: Ctx, quota: object = {}, extra: object = {}) => ({
  accountId: x.s.accountId,
  reason: "bad input test",
  requestId: uniq("adj"),
  target: { case: "quota" as const, value: { subscriptionId: x.s.subscriptionId, limit: "monthly", units: 10n, ...quota } },
  ...extra,
});
const walletAdjust = (x: Ctx, amount: object | undefined, wallet = "prepaid") => ({
  accountId: x.s.accountId,
  reason: "bad input test",
  requestId: uniq("adj"),
  target: { case: "wallet" as const, value: { wallet, ...(amount ? { amount: amount as never } : {}) } },
});
const plan = (limits: string, extra = "") => `plans:\n  - id: bad-input\n    name: Changed\n    limits:\n${limits}\n${extra}`;

const CASES: Groups = {
  CheckAndReserve: [
    { name: "cost negative", call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), cost: -1n }), want: invalid("cost") },
    { name: "cost zero", call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), cost: 0n }), want: invalid("cost") },
    { name: "cost above 1e15", call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), cost: ABOVE_1E15 }), want: invalid("cost") },
    { name: "cost int64 max", call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), cost: INT64_MAX }), want: invalid("cost") },
    { name: "cost int64 min", call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), cost: INT64_MIN }), want: invalid("cost") },
    { name: "estimated_spend_micros negative", call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), estimatedSpendMicros: -1n }), want: invalid("estimated_spend_micros") },
    { name: "estimated_spend_micros int64 max", call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), estimatedSpendMicros: INT64_MAX }), want: invalid("estimated_spend_micros") },
    { name: "meter value negative", call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), meters: { tokens: -1n } }), want: invalid("meters") },
    { name: "meter value int64 max", call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), meters: { tokens: INT64_MAX } }), want: invalid("meters") },
    { name: "meter name with bad characters", call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), meters: { "Bad Meter!": 1n } }), want: invalid("meters") },
    { name: "meter name of 100k characters", call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), meters: { [LONG]: 1n } }), want: invalid("meters") },
    { name: "17 meters", call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), meters: Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`m${i}`, 1n])) }), want: invalid("meters") },
    { name: "product empty", call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), product: "" }), want: invalid("product") },
    { name: "product of 100k characters", call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), product: LONG }), want: invalid("product") },
    { name: "product with bad characters", call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), product: "API One!" }), want: invalid("product") },
    { name: "product not in the plan", call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), product: "api-three" }), want: denied(DenyReason.PRODUCT_NOT_ALLOWED) },
    { name: "method empty", call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), method: "" }), want: invalid("method") },
    { name: "method of 100k characters", call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), method: LONG }), want: invalid("method") },
    { name: "method with bad characters", call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), method: "get users" }), want: invalid("method") },
    {
      name: "unknown method in CHECK_ONLY: the plan's default weight, nothing reserved",
      call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), method: "never.heard.of", mode: Mode.CHECK_ONLY }),
      want: { kind: "ok", what: "ALLOWED, cost 1, no reservation", check: (r) => r.decision === Decision.ALLOWED && r.cost === 1n && r.reservationId === "" },
    },
    { name: "neither api_key nor key_id", call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), apiKey: "" }), want: invalid("api_key") },
    { name: "both api_key and key_id", call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), keyId: x.s.keyId }), want: invalid("key_id") },
    { name: "api_key garbage", call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), apiKey: "garbage" }), want: denied(DenyReason.KEY_INVALID) },
    { name: "api_key of 100k characters", call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), apiKey: `qa_${LONG}` }), want: denied(DenyReason.KEY_INVALID) },
    { name: "api_key well-formed, unknown key id", call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), apiKey: `qa_${UNKNOWN_KEY_ID}_${"A".repeat(43)}` }), want: denied(DenyReason.KEY_INVALID) },
    { name: "api_key with the wrong secret", call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), apiKey: `qa_${x.s.keyId}_${"B".repeat(43)}` }), want: denied(DenyReason.KEY_INVALID) },
    { name: "key_id with wrong characters", call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), apiKey: "", keyId: "KEY-0123456789AB" }), want: invalid("key_id") },
    { name: "key_id of 100k characters", call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), apiKey: "", keyId: LONG }), want: invalid("key_id") },
    { name: "key_id unknown", call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), apiKey: "", keyId: UNKNOWN_KEY_ID }), want: denied(DenyReason.KEY_INVALID) },
    { name: "idempotency_id with bad characters", call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), idempotencyId: "id with spaces" }), want: invalid("idempotency_id") },
    { name: "idempotency_id of 100k characters", call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), idempotencyId: LONG }), want: invalid("idempotency_id") },
    { name: "mode 99", call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), mode: 99 as Mode }), want: invalid("mode") },
    { name: "reservation_ttl zero", call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), reservationTtl: { seconds: 0n, nanos: 0 } }), want: invalid("reservation_ttl") },
    { name: "reservation_ttl 500 ms", call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), reservationTtl: { seconds: 0n, nanos: 500_000_000 } }), want: invalid("reservation_ttl") },
    { name: "reservation_ttl negative", call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), reservationTtl: { seconds: -5n, nanos: 0 } }), want: invalid("reservation_ttl") },
    { name: "reservation_ttl 2 h", call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), reservationTtl: { seconds: 7200n, nanos: 0 } }), want: invalid("reservation_ttl") },
    { name: "reservation_ttl int64 max seconds", call: (c, x) => c.quota.checkAndReserve({ ...checkBase(x), reservationTtl: { seconds: INT64_MAX, nanos: 0 } }), want: invalid("reservation_ttl") },
  ],

  Release: [
    { name: "reservation_id empty", call: (c, x) => c.quota.release({ ...releaseBase(x), reservationId: "" }), want: invalid("reservation_id") },
    { name: 'reservation_id "abc"', call: (c, x) => c.quota.release({ ...releaseBase(x), reservationId: "abc" }), want: invalid("reservation_id") },
    { name: "reservation_id of 100k characters", call: (c, x) => c.quota.release({ ...releaseBase(x), reservationId: LONG }), want: invalid("reservation_id") },
    { name: "reservation_id well-formed, unknown", call: (c, x) => c.quota.release({ ...releaseBase(x), reservationId: `${x.openReservation.slice(0, -22)}${"A".repeat(22)}` }), want: NOT_FOUND },
    {
      name: "reservation_id well-formed, unknown account",
      call: (c, x) => c.quota.release({ ...releaseBase(x), reservationId: x.openReservation.replace(`r~${x.s.accountId}~`, "r~no-such-account~") }),
      want: NOT_FOUND,
    },
    { name: "outcome 99", call: (c, x) => c.quota.release({ ...releaseBase(x), outcome: 99 as Outcome }), want: invalid("outcome") },
    { name: "actual_cost negative", call: (c, x) => c.quota.release({ ...releaseBase(x), actualCost: -1n }), want: invalid("actual_cost") },
    { name: "actual_cost above 1e15", call: (c, x) => c.quota.release({ ...releaseBase(x), actualCost: ABOVE_1E15 }), want: invalid("actual_cost") },
    { name: "actual_cost int64 max", call: (c, x) => c.quota.release({ ...releaseBase(x), actualCost: INT64_MAX }), want: invalid("actual_cost") },
    { name: "actual_spend_micros negative", call: (c, x) => c.quota.release({ ...releaseBase(x), actualSpendMicros: -1n }), want: invalid("actual_spend_micros") },
    { name: "actual_spend_micros int64 max", call: (c, x) => c.quota.release({ ...releaseBase(x), actualSpendMicros: INT64_MAX }), want: invalid("actual_spend_micros") },
    { name: "actual_meters value negative", call: (c, x) => c.quota.release({ ...releaseBase(x), actualMeters: { tokens: -1n } }), want: invalid("actual_meters") },
    { name: "actual_meters value int64 max", call: (c, x) => c.quota.release({ ...releaseBase(x), actualMeters: { tokens: INT64_MAX } }), want: invalid("actual_meters") },
    { name: "actual_meters name with bad characters", call: (c, x) => c.quota.release({ ...releaseBase(x), actualMeters: { "Bad Meter!": 1n } }), want: invalid("actual_meters") },
  ],

  TopUp: [
    { name: "idempotency_key empty", call: (c, x) => c.quota.topUp({ ...quotaTopUp(x, [{ units: 100n }]), idempotencyKey: "" }), want: invalid("idempotency_key") },
    { name: "idempotency_key with bad characters", call: (c, x) => c.quota.topUp({ ...quotaTopUp(x, [{ units: 100n }]), idempotencyKey: "key with spaces" }), want: invalid("idempotency_key") },
    { name: "idempotency_key of 100k characters", call: (c, x) => c.quota.topUp({ ...quotaTopUp(x, [{ units: 100n }]), idempotencyKey: LONG }), want: invalid("idempotency_key") },
    { name: "no target", call: (c, x) => c.quota.topUp({ apiKey: x.s.apiKey, idempotencyKey: uniq("t"), funding: { case: "fromWallet", value: {} } }), want: invalid("target") },
    { name: "both api_key and account_id", call: (c, x) => c.quota.topUp({ ...quotaTopUp(x, [{ units: 100n }]), accountId: x.s.accountId }), want: invalid("account_id") },
    { name: "neither api_key nor account_id", call: (c, x) => c.quota.topUp({ ...quotaTopUp(x, [{ units: 100n }]), apiKey: "" }), want: invalid("account_id") },
    { name: "api_key garbage", call: (c, x) => c.quota.topUp({ ...quotaTopUp(x, [{ units: 100n }]), apiKey: "garbage" }), want: [PERMISSION_DENIED, UNAUTHENTICATED, NOT_FOUND] },
    { name: "api_key of 100k characters", call: (c, x) => c.quota.topUp({ ...quotaTopUp(x, [{ units: 100n }]), apiKey: `qa_${LONG}` }), want: [PERMISSION_DENIED, UNAUTHENTICATED, NOT_FOUND] },
    { name: "api_key with the wrong secret", call: (c, x) => c.quota.topUp({ ...quotaTopUp(x, [{ units: 100n }]), apiKey: `qa_${x.s.keyId}_${"B".repeat(43)}` }), want: [PERMISSION_DENIED, UNAUTHENTICATED, NOT_FOUND] },
    { name: "account_id unknown", call: (c, x) => c.quota.topUp({ ...quotaTopUp(x, [{ units: 100n }]), apiKey: "", accountId: "no-such-account" }), want: NOT_FOUND },
    { name: "account_id malformed", call: (c, x) => c.quota.topUp({ ...quotaTopUp(x, [{ units: 100n }]), apiKey: "", accountId: "Not An Account!" }), want: [invalid("account_id"), NOT_FOUND] },
    { name: "account_id of 100k characters", call: (c, x) => c.quota.topUp({ ...quotaTopUp(x, [{ units: 100n }]), apiKey: "", accountId: LONG }), want: [invalid("account_id"), NOT_FOUND] },
    { name: "subscription_id unknown (account_id caller)", call: (c, x) => c.quota.topUp({ ...quotaTopUp(x, [{ units: 100n }]), apiKey: "", accountId: x.s.accountId, subscriptionId: UNKNOWN_SUBSCRIPTION_ID }), want: NOT_FOUND },
    { name: "subscription_id of another account (account_id caller)", call: (c, x) => c.quota.topUp({ ...quotaTopUp(x, [{ units: 100n }]), apiKey: "", accountId: x.s.accountId, subscriptionId: x.other.subscriptionId }), want: NOT_FOUND },
    { name: "subscription_id of 100k characters (account_id caller)", call: (c, x) => c.quota.topUp({ ...quotaTopUp(x, [{ units: 100n }]), apiKey: "", accountId: x.s.accountId, subscriptionId: LONG }), want: [invalid("subscription_id"), NOT_FOUND] },
    { name: "subscription_id not the key's own (api_key caller)", call: (c, x) => c.quota.topUp({ ...quotaTopUp(x, [{ units: 100n }]), subscriptionId: x.other.subscriptionId }), want: [PERMISSION_DENIED, NOT_FOUND, invalid("subscription_id")] },
    { name: "quota.lines empty", call: (c, x) => c.quota.topUp(quotaTopUp(x, [])), want: invalid("quota.lines") },
    { name: "51 quota.lines", call: (c, x) => c.quota.topUp(quotaTopUp(x, Array.from({ length: 51 }, () => ({ units: 100n })))), want: invalid("quota.lines") },
    { name: "units negative", call: (c, x) => c.quota.topUp(quotaTopUp(x, [{ units: -100n }])), want: invalid("quota.lines[0].units") },
    { name: "units zero", call: (c, x) => c.quota.topUp(quotaTopUp(x, [{ units: 0n }])), want: invalid("quota.lines[0].units") },
    { name: "units not a multiple of the increment", call: (c, x) => c.quota.topUp(quotaTopUp(x, [{ units: 150n }])), want: invalid("quota.lines[0].units") },
    { name: "units above 1e15", call: (c, x) => c.quota.topUp(quotaTopUp(x, [{ units: 1_000_000_000_000_100n }])), want: invalid("quota.lines[0].units") },
    { name: "units int64 max", call: (c, x) => c.quota.topUp(quotaTopUp(x, [{ units: INT64_MAX }])), want: invalid("quota.lines[0].units") },
    { name: "units int64 min", call: (c, x) => c.quota.topUp(quotaTopUp(x, [{ units: INT64_MIN }])), want: invalid("quota.lines[0].units") },
    { name: "second line bad: nothing of the first applies", call: (c, x) => c.quota.topUp(quotaTopUp(x, [{ units: 100n }, { units: -100n }])), want: invalid("quota.lines[1].units") },
    { name: "units and amount both", call: (c, x) => c.quota.topUp(quotaTopUp(x, [{ units: 100n, amount: usd(1n) }])), want: invalid("quota.lines[0]") },
    { name: "amount nanos 500 (sub-micro)", call: (c, x) => c.quota.topUp(quotaTopUp(x, [{ amount: usd(1n, 500) }])), want: invalid("quota.lines[0].amount.nanos") },
    { name: "amount nanos 1e9", call: (c, x) => c.quota.topUp(quotaTopUp(x, [{ amount: usd(1n, 1_000_000_000) }])), want: invalid("quota.lines[0].amount.nanos") },
    { name: "amount nanos int32 max", call: (c, x) => c.quota.topUp(quotaTopUp(x, [{ amount: usd(0n, INT32_MAX) }])), want: invalid("quota.lines[0].amount.nanos") },
    { name: "amount units and nanos of mismatched signs", call: (c, x) => c.quota.topUp(quotaTopUp(x, [{ amount: usd(1n, -500_000_000) }])), want: invalid("quota.lines[0].amount") },
    { name: "amount in EUR", call: (c, x) => c.quota.topUp(quotaTopUp(x, [{ amount: usd(1n, 0, "EUR") }])), want: invalid("quota.lines[0].amount.currency_code") },
    { name: "amount negative", call: (c, x) => c.quota.topUp(quotaTopUp(x, [{ amount: usd(-1n) }])), want: invalid("quota.lines[0].amount") },
    { name: "amount zero", call: (c, x) => c.quota.topUp(quotaTopUp(x, [{ amount: usd(0n) }])), want: invalid("quota.lines[0].amount") },
    { name: "amount units int64 max", call: (c, x) => c.quota.topUp(quotaTopUp(x, [{ amount: usd(INT64_MAX) }])), want: invalid("quota.lines[0].amount") },
    { name: "amount buying a fraction of a unit ($0.005)", call: (c, x) => c.quota.topUp(quotaTopUp(x, [{ amount: usd(0n, 5_000_000) }])), want: invalid("quota.lines[0].amount") },
    { name: "line limit unknown", call: (c, x) => c.quota.topUp(quotaTopUp(x, [{ units: 100n, limit: "nope" }])), want: invalid("quota.lines[0].limit") },
    { name: "line limit is a rate limit", call: (c, x) => c.quota.topUp(quotaTopUp(x, [{ units: 100n, limit: "rps" }])), want: invalid("quota.lines[0].limit") },
    { name: "line product not in the plan", call: (c, x) => c.quota.topUp(quotaTopUp(x, [{ units: 100n, product: "api-three" }])), want: invalid("quota.lines[0].product") },
    { name: "line product with bad characters", call: (c, x) => c.quota.topUp(quotaTopUp(x, [{ units: 100n, product: "API One!" }])), want: invalid("quota.lines[0].product") },
    { name: "line product of 100k characters", call: (c, x) => c.quota.topUp(quotaTopUp(x, [{ units: 100n, product: LONG }])), want: invalid("quota.lines[0].product") },
    {
      name: "from_wallet.max_amount nanos 500",
      call: (c, x) => c.quota.topUp({ ...quotaTopUp(x, [{ units: 100n }]), funding: { case: "fromWallet", value: { maxAmount: usd(5n, 500) } } }),
      want: invalid("from_wallet.max_amount.nanos"),
    },
    {
      name: "from_wallet.max_amount in EUR",
      call: (c, x) => c.quota.topUp({ ...quotaTopUp(x, [{ units: 100n }]), funding: { case: "fromWallet", value: { maxAmount: usd(5n, 0, "EUR") } } }),
      want: invalid("from_wallet.max_amount.currency_code"),
    },
    {
      name: "from_wallet.max_amount below the price",
      call: (c, x) => c.quota.topUp({ ...quotaTopUp(x, [{ units: 100n }]), funding: { case: "fromWallet", value: { maxAmount: usd(0n, 500_000_000) } } }),
      want: FAILED_PRECONDITION,
    },
    { name: "more than the wallet holds", call: (c, x) => c.quota.topUp(quotaTopUp(x, [{ units: 100_000n }])), want: FAILED_PRECONDITION },
    {
      name: "quota paid externally with the wrong amount",
      call: (c, x) => c.quota.topUp({ ...quotaTopUp(x, [{ units: 100n }]), funding: { case: "external", value: { reference: uniq("ref"), amount: usd(2n), provider: "test" } } }),
      want: invalid("external.amount"),
    },
    {
      name: "wallet deposit funded from the wallet",
      call: (c, x) => c.quota.topUp({ ...walletTopUp(x, usd(1n)), funding: { case: "fromWallet", value: {} } }),
      want: invalid("external"),
    },
    { name: "wallet.amount missing", call: (c, x) => c.quota.topUp(walletTopUp(x, undefined)), want: invalid("wallet.amount") },
    { name: "wallet.amount nanos 500", call: (c, x) => c.quota.topUp(walletTopUp(x, usd(1n, 500))), want: invalid("wallet.amount.nanos") },
    { name: "wallet.amount in EUR", call: (c, x) => c.quota.topUp(walletTopUp(x, usd(1n, 0, "EUR"))), want: invalid("wallet.amount.currency_code") },
    { name: "wallet.amount of mismatched signs", call: (c, x) => c.quota.topUp(walletTopUp(x, usd(-1n, 500_000_000))), want: invalid("wallet.amount") },
    { name: "wallet.amount negative", call: (c, x) => c.quota.topUp(walletTopUp(x, usd(-1n))), want: invalid("wallet.amount") },
    { name: "wallet.amount units int64 max", call: (c, x) => c.quota.topUp(walletTopUp(x, usd(INT64_MAX))), want: invalid("wallet.amount") },
    { name: "external.amount different from wallet.amount", call: (c, x) => c.quota.topUp(walletTopUp(x, usd(2n))), want: invalid("external.amount") },
    { name: "external.amount missing", call: (c, x) => c.quota.topUp(walletTopUp(x, usd(1n), { amount: undefined })), want: invalid("external.amount") },
    { name: "external.amount nanos 500", call: (c, x) => c.quota.topUp(walletTopUp(x, usd(1n), { amount: usd(1n, 500) })), want: invalid("external.amount.nanos") },
    { name: "external.reference empty", call: (c, x) => c.quota.topUp(walletTopUp(x, usd(1n), { reference: "" })), want: invalid("external.reference") },
    { name: "external.reference of 100k characters", call: (c, x) => c.quota.topUp(walletTopUp(x, usd(1n), { reference: LONG })), want: invalid("external.reference") },
    { name: "external.reference with spaces", call: (c, x) => c.quota.topUp(walletTopUp(x, usd(1n), { reference: "ref with spaces" })), want: invalid("external.reference") },
    { name: "external.provider with bad characters", call: (c, x) => c.quota.topUp(walletTopUp(x, usd(1n), { provider: "Not A Provider!" })), want: invalid("external.provider") },
    {
      name: "external.reference already credited to another account",
      call: (c, x) => c.quota.topUp({ ...walletTopUp(x, usd(10n), { reference: x.seedReference, amount: usd(10n) }), accountId: x.other.accountId }),
      // docs/operations.md: "refused (ALREADY_EXISTS, reason PAYMENT_REFERENCE_USED)" — exactly that, nothing else.
      want: code(status.ALREADY_EXISTS, "ALREADY_EXISTS", "PAYMENT_REFERENCE_USED"),
    },
    {
      name: "credit.amount negative",
      call: (c, x) => c.quota.topUp({ ...walletTopUp(x, undefined, { amount: usd(1n) }), target: { case: "credit", value: { amount: usd(-1n) } } }),
      want: invalid("credit.amount"),
    },
    { name: "add_on package unknown", call: (c, x) => c.quota.topUp(addOnTopUp(x, "nope", "")), want: invalid("add_on.package_id") },
    { name: "add_on limit unknown", call: (c, x) => c.quota.topUp(addOnTopUp(x, "plus-100", "nope")), want: invalid("add_on.limit") },
    { name: "add_on removal when none is active", call: (c, x) => c.quota.topUp(addOnTopUp(x, "", "")), want: FAILED_PRECONDITION },
  ],

  GetLimits: [
    { name: "nothing given", call: (c) => c.quota.getLimits({}), want: invalid("api_key") },
    { name: "api_key and account_id both", call: (c, x) => c.quota.getLimits({ apiKey: x.s.apiKey, accountId: x.s.accountId }), want: invalid("api_key") },
    { name: "api_key garbage", call: (c) => c.quota.getLimits({ apiKey: "garbage" }), want: NOT_FOUND },
    { name: "api_key of 100k characters", call: (c) => c.quota.getLimits({ apiKey: `qa_${LONG}` }), want: NOT_FOUND },
    { name: "api_key with the wrong secret", call: (c, x) => c.quota.getLimits({ apiKey: `qa_${x.s.keyId}_${"B".repeat(43)}` }), want: NOT_FOUND },
    { name: "key_id with wrong characters", call: (c) => c.quota.getLimits({ keyId: "KEY-0123456789AB" }), want: invalid("key_id") },
    { name: "key_id unknown", call: (c) => c.quota.getLimits({ keyId: UNKNOWN_KEY_ID }), want: NOT_FOUND },
    { name: "account_id unknown", call: (c) => c.quota.getLimits({ accountId: "no-such-account" }), want: NOT_FOUND },
    { name: "account_id malformed", call: (c) => c.quota.getLimits({ accountId: "Not An Account!" }), want: invalid("account_id") },
    { name: "account_id of 100k characters", call: (c) => c.quota.getLimits({ accountId: LONG }), want: invalid("account_id") },
    { name: "product with bad characters", call: (c, x) => c.quota.getLimits({ apiKey: x.s.apiKey, product: "API One!" }), want: invalid("product") },
    { name: "product of 100k characters", call: (c, x) => c.quota.getLimits({ apiKey: x.s.apiKey, product: LONG }), want: invalid("product") },
  ],

  CreateAccount: [
    { name: "id malformed", call: (c) => c.admin.createAccount({ id: "Bad Id!", name: "x" }, ADMIN), want: invalid("id") },
    { name: "id of 100k characters", call: (c) => c.admin.createAccount({ id: LONG, name: "x" }, ADMIN), want: invalid("id") },
    { name: "name empty", call: (c) => c.admin.createAccount({ id: "", name: "" }, ADMIN), want: invalid("name") },
    { name: "name of 100k characters", call: (c) => c.admin.createAccount({ id: "", name: LONG }, ADMIN), want: invalid("name") },
    { name: "request_id malformed", call: (c) => c.admin.createAccount({ name: "x", requestId: "id with spaces" }, ADMIN), want: invalid("request_id") },
    { name: "request_id of 100k characters", call: (c) => c.admin.createAccount({ name: "x", requestId: LONG }, ADMIN), want: invalid("request_id") },
    { name: "id already taken", call: (c, x) => c.admin.createAccount({ id: x.s.accountId, name: "again" }, ADMIN), want: ALREADY_EXISTS },
  ],

  GetAccount: [
    { name: "id empty", call: (c) => c.admin.getAccount({ id: "" }, ADMIN), want: invalid("id") },
    { name: "id unknown", call: (c) => c.admin.getAccount({ id: "no-such-account" }, ADMIN), want: NOT_FOUND },
    { name: "id of 100k characters", call: (c) => c.admin.getAccount({ id: LONG }, ADMIN), want: [invalid("id"), NOT_FOUND] },
  ],

  ApplyPlans: [
    { name: "document empty", call: (c) => c.admin.applyPlans({ document: "" }, ADMIN), want: invalid("document") },
    { name: "document not YAML", call: (c) => c.admin.applyPlans({ document: "plans: [unclosed" }, ADMIN), want: invalid("document") },
    { name: "document of 100k characters of garbage", call: (c) => c.admin.applyPlans({ document: LONG }, ADMIN), want: invalid("document") },
    { name: "plans not a list", call: (c) => c.admin.applyPlans({ document: "plans: 5" }, ADMIN), want: invalidDocument("plans") },
    { name: "limit negative", call: (c) => c.admin.applyPlans({ document: plan("      - { name: monthly, kind: quota, limit: -5, period: monthly }") }, ADMIN), want: invalidDocument("plans[0].limits[0].limit") },
    { name: "limit above 1e15", call: (c) => c.admin.applyPlans({ document: plan("      - { name: monthly, kind: quota, limit: 10000000000000000, period: monthly }") }, ADMIN), want: invalidDocument("plans[0].limits[0].limit") },
    { name: "limit kind unknown", call: (c) => c.admin.applyPlans({ document: plan("      - { name: monthly, kind: bogus, limit: 5, period: monthly }") }, ADMIN), want: invalidDocument("plans[0].limits[0].kind") },
    { name: "plan id malformed", call: (c) => c.admin.applyPlans({ document: "plans:\n  - { id: 'Bad Id!', name: x, limits: [{ name: m, kind: quota, limit: 5, period: monthly }] }" }, ADMIN), want: invalidDocument("plans[0].id") },
    {
      name: "top-up price negative",
      call: (c) => c.admin.applyPlans({ document: plan("      - { name: monthly, kind: quota, limit: 5, period: monthly }", '    topUp: { limit: monthly, price: { units: 100, amount: "-1.00" } }') }, ADMIN),
      want: invalidDocument("plans[0].topUp.price.amount"),
    },
    {
      name: "a valid plan then an invalid one: neither is applied",
      call: (c) => c.admin.applyPlans({ document: `${plan("      - { name: monthly, kind: quota, limit: 1, period: monthly }")}\n  - { id: second, name: Second }` }, ADMIN),
      want: invalidDocument("plans[1].limits"),
    },
    { name: "unknown field (typo)", call: (c) => c.admin.applyPlans({ document: plan("      - { name: monthly, kind: quota, limit: 5, period: monthly }", "    limts: []") }, ADMIN), want: invalidDocument("plans[0]") },
  ],

  CreateSubscription: [
    { name: "account_id empty", call: (c) => c.admin.createSubscription({ accountId: "", planId: "bad-input" }, ADMIN), want: invalid("account_id") },
    { name: "plan_id empty", call: (c, x) => c.admin.createSubscription({ accountId: x.s.accountId, planId: "" }, ADMIN), want: invalid("plan_id") },
    { name: "account unknown", call: (c) => c.admin.createSubscription({ accountId: "no-such-account", planId: "bad-input" }, ADMIN), want: NOT_FOUND },
    { name: "account_id of 100k characters", call: (c) => c.admin.createSubscription({ accountId: LONG, planId: "bad-input" }, ADMIN), want: [invalid("account_id"), NOT_FOUND] },
    { name: "plan unknown", call: (c, x) => c.admin.createSubscription({ accountId: x.s.accountId, planId: "no-such-plan" }, ADMIN), want: NOT_FOUND },
    {
      name: "ends_at before starts_at",
      call: (c, x) => c.admin.createSubscription({ accountId: x.s.accountId, planId: "bad-input", startsAt: { seconds: 2_000_000_000n }, endsAt: { seconds: 1_900_000_000n } }, ADMIN),
      want: invalid("ends_at"),
    },
    { name: "starts_at negative", call: (c, x) => c.admin.createSubscription({ accountId: x.s.accountId, planId: "bad-input", startsAt: { seconds: -1n } }, ADMIN), want: invalid("starts_at") },
    { name: "starts_at int64 max", call: (c, x) => c.admin.createSubscription({ accountId: x.s.accountId, planId: "bad-input", startsAt: { seconds: INT64_MAX } }, ADMIN), want: invalid("starts_at") },
    { name: "access_blocks on a plan without blocks", call: (c, x) => c.admin.createSubscription({ accountId: x.s.accountId, planId: "bad-input", accessBlocks: ["europe"] }, ADMIN), want: invalid("access_blocks") },
    { name: "add_ons package unknown", call: (c, x) => c.admin.createSubscription({ accountId: x.s.accountId, planId: "bad-input", addOns: { monthly: "nope" } }, ADMIN), want: invalid("add_ons[monthly]") },
    { name: "add_ons limit unknown", call: (c, x) => c.admin.createSubscription({ accountId: x.s.accountId, planId: "bad-input", addOns: { nope: "plus-100" } }, ADMIN), want: invalid("add_ons[nope]") },
    { name: "request_id malformed", call: (c, x) => c.admin.createSubscription({ accountId: x.s.accountId, planId: "bad-input", requestId: "id with spaces" }, ADMIN), want: invalid("request_id") },
  ],

  CancelSubscription: [
    { name: "subscription_id empty", call: (c) => c.admin.cancelSubscription({ subscriptionId: "" }, ADMIN), want: invalid("subscription_id") },
    { name: "subscription_id unknown", call: (c) => c.admin.cancelSubscription({ subscriptionId: UNKNOWN_SUBSCRIPTION_ID }, ADMIN), want: NOT_FOUND },
    { name: "subscription_id of 100k characters", call: (c) => c.admin.cancelSubscription({ subscriptionId: LONG }, ADMIN), want: [invalid("subscription_id"), NOT_FOUND] },
  ],

  SetAddOn: [
    { name: "subscription_id empty", call: (c) => c.admin.setAddOn({ subscriptionId: "", packageId: "plus-100" }, ADMIN), want: invalid("subscription_id") },
    { name: "subscription_id unknown", call: (c) => c.admin.setAddOn({ subscriptionId: UNKNOWN_SUBSCRIPTION_ID, packageId: "plus-100" }, ADMIN), want: NOT_FOUND },
    { name: "package_id unknown", call: (c, x) => c.admin.setAddOn({ subscriptionId: x.s.subscriptionId, packageId: "nope" }, ADMIN), want: invalid("package_id") },
    { name: "package_id of 100k characters", call: (c, x) => c.admin.setAddOn({ subscriptionId: x.s.subscriptionId, packageId: LONG }, ADMIN), want: invalid("package_id") },
    { name: "limit unknown", call: (c, x) => c.admin.setAddOn({ subscriptionId: x.s.subscriptionId, packageId: "plus-100", limit: "nope" }, ADMIN), want: invalid("limit") },
    { name: "removal when none is active", call: (c, x) => c.admin.setAddOn({ subscriptionId: x.s.subscriptionId, packageId: "" }, ADMIN), want: FAILED_PRECONDITION },
    { name: "request_id malformed", call: (c, x) => c.admin.setAddOn({ subscriptionId: x.s.subscriptionId, packageId: "plus-100", requestId: "id with spaces" }, ADMIN), want: invalid("request_id") },
  ],

  CreateApiKey: [
    { name: "account_id empty", call: (c, x) => c.admin.createApiKey({ accountId: "", subscriptionId: x.s.subscriptionId }, ADMIN), want: invalid("account_id") },
    { name: "subscription_id empty", call: (c, x) => c.admin.createApiKey({ accountId: x.s.accountId, subscriptionId: "" }, ADMIN), want: invalid("subscription_id") },
    { name: "subscription unknown", call: (c, x) => c.admin.createApiKey({ accountId: x.s.accountId, subscriptionId: UNKNOWN_SUBSCRIPTION_ID }, ADMIN), want: NOT_FOUND },
    { name: "subscription of another account", call: (c, x) => c.admin.createApiKey({ accountId: x.s.accountId, subscriptionId: x.other.subscriptionId }, ADMIN), want: NOT_FOUND },
    { name: "account unknown", call: (c, x) => c.admin.createApiKey({ accountId: "no-such-account", subscriptionId: x.s.subscriptionId }, ADMIN), want: NOT_FOUND },
    { name: "name of 100k characters", call: (c, x) => c.admin.createApiKey({ accountId: x.s.accountId, subscriptionId: x.s.subscriptionId, name: LONG }, ADMIN), want: invalid("name") },
    { name: "sub_limits zero", call: (c, x) => c.admin.createApiKey({ accountId: x.s.accountId, subscriptionId: x.s.subscriptionId, subLimits: { monthly: 0n } }, ADMIN), want: invalid("sub_limits[monthly]") },
    { name: "sub_limits negative", call: (c, x) => c.admin.createApiKey({ accountId: x.s.accountId, subscriptionId: x.s.subscriptionId, subLimits: { monthly: -5n } }, ADMIN), want: invalid("sub_limits[monthly]") },
    { name: "sub_limits int64 max", call: (c, x) => c.admin.createApiKey({ accountId: x.s.accountId, subscriptionId: x.s.subscriptionId, subLimits: { monthly: INT64_MAX } }, ADMIN), want: invalid("sub_limits[monthly]") },
    { name: "sub_limits for an unknown limit", call: (c, x) => c.admin.createApiKey({ accountId: x.s.accountId, subscriptionId: x.s.subscriptionId, subLimits: { nope: 5n } }, ADMIN), want: invalid("sub_limits[nope]") },
    { name: "sub_limits for a rate limit", call: (c, x) => c.admin.createApiKey({ accountId: x.s.accountId, subscriptionId: x.s.subscriptionId, subLimits: { rps: 5n } }, ADMIN), want: invalid("sub_limits[rps]") },
    { name: "expires_at negative", call: (c, x) => c.admin.createApiKey({ accountId: x.s.accountId, subscriptionId: x.s.subscriptionId, expiresAt: { seconds: -1n } }, ADMIN), want: invalid("expires_at") },
    { name: "request_id of 100k characters", call: (c, x) => c.admin.createApiKey({ accountId: x.s.accountId, subscriptionId: x.s.subscriptionId, requestId: LONG }, ADMIN), want: invalid("request_id") },
  ],

  RevokeApiKey: [
    { name: "key_id empty", call: (c) => c.admin.revokeApiKey({ keyId: "" }, ADMIN), want: invalid("key_id") },
    { name: "key_id unknown", call: (c) => c.admin.revokeApiKey({ keyId: UNKNOWN_KEY_ID }, ADMIN), want: NOT_FOUND },
    { name: "key_id with wrong characters", call: (c) => c.admin.revokeApiKey({ keyId: "KEY-0123456789AB" }, ADMIN), want: [invalid("key_id"), NOT_FOUND] },
    { name: "key_id of 100k characters", call: (c) => c.admin.revokeApiKey({ keyId: LONG }, ADMIN), want: [invalid("key_id"), NOT_FOUND] },
    { name: "a whole api_key instead of its id", call: (c, x) => c.admin.revokeApiKey({ keyId: x.s.apiKey }, ADMIN), want: [invalid("key_id"), NOT_FOUND] },
  ],

  ListApiKeys: [
    { name: "account_id empty", call: (c) => c.admin.listApiKeys({ accountId: "" }, ADMIN), want: invalid("account_id") },
    { name: "account_id unknown", call: (c) => c.admin.listApiKeys({ accountId: "no-such-account" }, ADMIN), want: NOT_FOUND },
    { name: "account_id of 100k characters", call: (c) => c.admin.listApiKeys({ accountId: LONG }, ADMIN), want: [invalid("account_id"), NOT_FOUND] },
  ],

  Deposit: [
    { name: "wallet empty", call: (c, x) => c.admin.deposit({ ...depositBase(x), wallet: "" }, ADMIN), want: invalid("wallet") },
    { name: "wallet unknown", call: (c, x) => c.admin.deposit({ ...depositBase(x), wallet: "savings" }, ADMIN), want: invalid("wallet") },
    { name: "payment missing", call: (c, x) => c.admin.deposit({ accountId: x.s.accountId, wallet: "prepaid" }, ADMIN), want: invalid("payment") },
    { name: "payment.reference empty", call: (c, x) => c.admin.deposit(depositBase(x, { reference: "" }), ADMIN), want: invalid("payment.reference") },
    { name: "payment.reference of 100k characters", call: (c, x) => c.admin.deposit(depositBase(x, { reference: LONG }), ADMIN), want: invalid("payment.reference") },
    { name: "payment.reference with spaces", call: (c, x) => c.admin.deposit(depositBase(x, { reference: "ref with spaces" }), ADMIN), want: invalid("payment.reference") },
    { name: "payment.provider with bad characters", call: (c, x) => c.admin.deposit(depositBase(x, { provider: "Not A Provider!" }), ADMIN), want: invalid("payment.provider") },
    { name: "payment.amount missing", call: (c, x) => c.admin.deposit(depositBase(x, { amount: undefined }), ADMIN), want: invalid("payment.amount") },
    { name: "payment.amount nanos 500", call: (c, x) => c.admin.deposit(depositBase(x, { amount: usd(1n, 500) }), ADMIN), want: invalid("payment.amount.nanos") },
    { name: "payment.amount in EUR", call: (c, x) => c.admin.deposit(depositBase(x, { amount: usd(1n, 0, "EUR") }), ADMIN), want: invalid("payment.amount.currency_code") },
    { name: "payment.amount of mismatched signs", call: (c, x) => c.admin.deposit(depositBase(x, { amount: usd(1n, -500_000_000) }), ADMIN), want: invalid("payment.amount") },
    { name: "payment.amount negative", call: (c, x) => c.admin.deposit(depositBase(x, { amount: usd(-1n) }), ADMIN), want: invalid("payment.amount") },
    { name: "payment.amount zero", call: (c, x) => c.admin.deposit(depositBase(x, { amount: usd(0n) }), ADMIN), want: invalid("payment.amount") },
    { name: "payment.amount units int64 max", call: (c, x) => c.admin.deposit(depositBase(x, { amount: usd(INT64_MAX) }), ADMIN), want: invalid("payment.amount") },
    { name: "account_id empty", call: (c, x) => c.admin.deposit({ ...depositBase(x), accountId: "" }, ADMIN), want: invalid("account_id") },
    { name: "account unknown", call: (c, x) => c.admin.deposit({ ...depositBase(x), accountId: "no-such-account" }, ADMIN), want: NOT_FOUND },
    { name: "account_id of 100k characters", call: (c, x) => c.admin.deposit({ ...depositBase(x), accountId: LONG }, ADMIN), want: [invalid("account_id"), NOT_FOUND] },
    {
      name: "payment.reference already credited to another account",
      call: (c, x) => c.admin.deposit({ ...depositBase(x, { reference: x.seedReference, amount: usd(10n) }), accountId: x.other.accountId }, ADMIN),
      want: code(status.ALREADY_EXISTS, "ALREADY_EXISTS", "PAYMENT_REFERENCE_USED"),
    },
    {
      name: "account unknown, with a reference already credited to another account",
      call: (c, x) => c.admin.deposit({ ...depositBase(x, { reference: x.seedReference, amount: usd(10n) }), accountId: "no-such-account" }, ADMIN),
      want: NOT_FOUND,
    },
  ],

  Adjust: [
    { name: "account_id empty", call: (c, x) => c.admin.adjust({ ...quotaAdjust(x), accountId: "" }, ADMIN), want: invalid("account_id") },
    { name: "account unknown", call: (c, x) => c.admin.adjust({ ...quotaAdjust(x), accountId: "no-such-account" }, ADMIN), want: NOT_FOUND },
    { name: "reason empty", call: (c, x) => c.admin.adjust({ ...quotaAdjust(x), reason: "" }, ADMIN), want: invalid("reason") },
    { name: "reason of 100k characters", call: (c, x) => c.admin.adjust({ ...quotaAdjust(x), reason: LONG }, ADMIN), want: invalid("reason") },
    { name: "request_id empty", call: (c, x) => c.admin.adjust({ ...quotaAdjust(x), requestId: "" }, ADMIN), want: invalid("request_id") },
    { name: "request_id of 100k characters", call: (c, x) => c.admin.adjust({ ...quotaAdjust(x), requestId: LONG }, ADMIN), want: invalid("request_id") },
    { name: "no target", call: (c, x) => c.admin.adjust({ accountId: x.s.accountId, reason: "r", requestId: uniq("adj") }, ADMIN), want: invalid("target") },
    { name: "quota.units zero", call: (c, x) => c.admin.adjust(quotaAdjust(x, { units: 0n }), ADMIN), want: invalid("quota.units") },
    { name: "quota.units int64 max", call: (c, x) => c.admin.adjust(quotaAdjust(x, { units: INT64_MAX }), ADMIN), want: invalid("quota.units") },
    { name: "quota.units int64 min", call: (c, x) => c.admin.adjust(quotaAdjust(x, { units: INT64_MIN }), ADMIN), want: invalid("quota.units") },
    { name: "quota.subscription_id unknown", call: (c, x) => c.admin.adjust(quotaAdjust(x, { subscriptionId: UNKNOWN_SUBSCRIPTION_ID }), ADMIN), want: NOT_FOUND },
    { name: "quota.subscription_id of another account", call: (c, x) => c.admin.adjust(quotaAdjust(x, { subscriptionId: x.other.subscriptionId }), ADMIN), want: NOT_FOUND },
    { name: "quota.limit empty", call: (c, x) => c.admin.adjust(quotaAdjust(x, { limit: "" }), ADMIN), want: invalid("quota.limit") },
    { name: "quota.limit unknown", call: (c, x) => c.admin.adjust(quotaAdjust(x, { limit: "nope" }), ADMIN), want: invalid("quota.limit") },
    { name: "quota.limit is a rate limit", call: (c, x) => c.admin.adjust(quotaAdjust(x, { limit: "rps" }), ADMIN), want: invalid("quota.limit") },
    { name: "quota.product not in the plan", call: (c, x) => c.admin.adjust(quotaAdjust(x, { product: "api-three" }), ADMIN), want: invalid("quota.product") },
    { name: "quota.product with bad characters", call: (c, x) => c.admin.adjust(quotaAdjust(x, { product: "API One!" }), ADMIN), want: invalid("quota.product") },
    { name: "quota.valid_until negative", call: (c, x) => c.admin.adjust(quotaAdjust(x, { validUntil: { seconds: -1n } }), ADMIN), want: invalid("quota.valid_until") },
    { name: "quota.valid_until in the past", call: (c, x) => c.admin.adjust(quotaAdjust(x, { validUntil: { seconds: 1_000_000n } }), ADMIN), want: invalid("quota.valid_until") },
    { name: "wallet.wallet unknown", call: (c, x) => c.admin.adjust(walletAdjust(x, usd(1n), "savings"), ADMIN), want: invalid("wallet.wallet") },
    { name: "wallet.amount missing", call: (c, x) => c.admin.adjust(walletAdjust(x, undefined), ADMIN), want: invalid("wallet.amount") },
    { name: "wallet.amount nanos 500", call: (c, x) => c.admin.adjust(walletAdjust(x, usd(1n, 500)), ADMIN), want: invalid("wallet.amount.nanos") },
    { name: "wallet.amount in EUR", call: (c, x) => c.admin.adjust(walletAdjust(x, usd(1n, 0, "EUR")), ADMIN), want: invalid("wallet.amount.currency_code") },
    { name: "wallet.amount of mismatched signs", call: (c, x) => c.admin.adjust(walletAdjust(x, usd(-1n, 500_000_000)), ADMIN), want: invalid("wallet.amount") },
    { name: "wallet.amount zero", call: (c, x) => c.admin.adjust(walletAdjust(x, usd(0n)), ADMIN), want: invalid("wallet.amount") },
    { name: "wallet.amount units int64 max", call: (c, x) => c.admin.adjust(walletAdjust(x, usd(INT64_MAX)), ADMIN), want: invalid("wallet.amount") },
    { name: "wallet debit below zero", call: (c, x) => c.admin.adjust(walletAdjust(x, usd(-1000n)), ADMIN), want: FAILED_PRECONDITION },
  ],

  ListLedger: [
    { name: "page_size negative", call: (c, x) => c.admin.listLedger({ accountId: x.s.accountId, pageSize: -1 }, ADMIN), want: invalid("page_size") },
    { name: "page_size 501", call: (c, x) => c.admin.listLedger({ accountId: x.s.accountId, pageSize: 501 }, ADMIN), want: invalid("page_size") },
    { name: "page_size int32 max", call: (c, x) => c.admin.listLedger({ accountId: x.s.accountId, pageSize: INT32_MAX }, ADMIN), want: invalid("page_size") },
    { name: "page_token garbage", call: (c, x) => c.admin.listLedger({ accountId: x.s.accountId, pageToken: "garbage" }, ADMIN), want: invalid("page_token") },
    { name: "page_token of 100k characters", call: (c, x) => c.admin.listLedger({ accountId: x.s.accountId, pageToken: LONG }, ADMIN), want: invalid("page_token") },
    { name: "account_id unknown", call: (c) => c.admin.listLedger({ accountId: "no-such-account" }, ADMIN), want: NOT_FOUND },
    { name: "account_id of 100k characters", call: (c) => c.admin.listLedger({ accountId: LONG }, ADMIN), want: [invalid("account_id"), NOT_FOUND] },
  ],

  "admin credential": [
    { name: "no authorization header", call: (c, x) => c.admin.adjust(walletAdjust(x, usd(1n))), want: UNAUTHENTICATED },
    { name: "wrong admin token", call: (c, x) => c.admin.adjust(walletAdjust(x, usd(1n)), { authorization: "Bearer not-the-token" }), want: UNAUTHENTICATED },
    // (8k, not 100k: HTTP/1.1 servers refuse headers above 16 KB with 431 before any handler runs.)
    { name: "admin token of 8k characters", call: (c, x) => c.admin.deposit(depositBase(x), { authorization: `Bearer ${"a".repeat(8_000)}` }), want: UNAUTHENTICATED },
  ],
};

// ------------------------------------------------------------------ the state that must not change

/** Row count and content hash of every table of the app's database, in one query. */
async function tableDigests(db: pg.Client): Promise<Record<string, string>> {
  const tables = await db.query<{ table_name: string }>(
    "select table_name from information_schema.tables where table_schema = 'public' and table_type = 'BASE TABLE' order by 1",
  );
  const sql = tables.rows
    .map(({ table_name }, i) => `select ${i} as i, count(*)::int as n, md5(coalesce(string_agg(x::text, '|' order by x::text), '')) as h from "${table_name}" x`)
    .join(" union all ");
  const r = await db.query<{ i: number; n: number; h: string }>(sql);
  return Object.fromEntries(r.rows.map((row) => [tables.rows[row.i]!.table_name, `${row.n} rows, md5 ${row.h}`]));
}

/** Every Redis key of the app (its prefix) with its full content. */
async function redisDigest(redis: Redis, prefix: string): Promise<string[]> {
  const keys: string[] = [];
  let cursor = "0";
  do {
    const [next, batch] = await redis.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 1000);
    cursor = next;
    keys.push(...batch);
  } while (cursor !== "0");
  keys.sort();
  const types = await Promise.all(keys.map((k) => redis.type(k)));
  const values = await Promise.all(
    keys.map((k, i): Promise<unknown> => {
      switch (types[i]) {
        case "string":
          return redis.get(k);
        case "hash":
          return redis.hgetall(k).then((h) => Object.entries(h).sort());
        case "zset":
          return redis.zrange(k, "0", "-1", "WITHSCORES");
        case "list":
          return redis.lrange(k, 0, -1);
        case "set":
          return redis.smembers(k).then((m) => m.sort());
        default:
          return Promise.resolve(types[i]);
      }
    }),
  );
  return keys.map((k, i) => `${k} ${types[i]} ${JSON.stringify(values[i])}`);
}

// ------------------------------------------------------------------ the suite

const PROTOCOLS: Protocol[] = ["grpc-js", "connect"];

describe("bad input changes nothing and answers a typed error naming the field (Postgres, Redis)", () => {
  let t: TestApp;
  let g: Clients;
  let redis: Redis;
  let db: pg.Client;
  const x = {} as Ctx;
  /**
   * The state after the previous case (or after the seeding, for the first case to run): the next case must leave it
   * exactly so. Order-independent by construction: every case starts from the seeded state and must not change it
   * (that is what each one asserts), so any order — or one case alone, `-t NAME` — compares against the real state
   * before it; and a case that did change something hands its new state on (`last = after`), so it fails alone
   * instead of failing every case after it. One snapshot per case instead of two keeps ~500 cases affordable.
   */
  let last: Awaited<ReturnType<typeof snapshot>>;
  const byProtocol = new Map<Protocol, Clients>();

  beforeAll(async () => {
    t = await startTestApp({
      env: {
        // Hundreds of admin calls per minute; no background flush or reconcile between two snapshots.
        QUOTA_ADMIN_RATE_PER_MINUTE: "1000000",
        QUOTA_FLUSH_INTERVAL_MS: "600000",
        QUOTA_RECONCILE_INTERVAL_MS: "600000",
      },
    });
    g = clients("grpc-js", { grpc: t.app.grpcPort, http: t.app.httpPort });
    for (const p of PROTOCOLS) byProtocol.set(p, p === "grpc-js" ? g : clients(p, { grpc: t.app.grpcPort, http: t.app.httpPort }));
    redis = new Redis(TEST_REDIS_URL, { enableAutoPipelining: true });
    db = new pg.Client({ connectionString: t.databaseUrl });
    await db.connect();
    await applyPlans(g, PLANS);

    // The seeded account: a funded wallet, one settled call, one open reservation, one wallet-funded top-up.
    x.s = await seedAccount(g, "bad-input");
    x.seedReference = uniq("seed-pay");
    await deposit(g, x.s.accountId, "prepaid", 10n, x.seedReference);
    x.other = await seedAccount(g, "bad-input");
    const settled = await g.quota.checkAndReserve({ apiKey: x.s.apiKey, product: "api-one", method: "heavy" });
    expect(settled.decision).toBe(Decision.ALLOWED);
    await g.quota.release({ reservationId: settled.reservationId, outcome: Outcome.COMMIT });
    const open = await g.quota.checkAndReserve({ apiKey: x.s.apiKey, product: "api-two", method: "get", reservationTtl: { seconds: 3600n } });
    expect(open.decision).toBe(Decision.ALLOWED);
    x.openReservation = open.reservationId;
    await g.quota.topUp({ apiKey: x.s.apiKey, idempotencyKey: "seed-topup", target: { case: "quota", value: { lines: [{ units: 100n }] } }, funding: { case: "fromWallet", value: {} } });
    const seeded = await g.quota.getLimits({ apiKey: x.s.apiKey });
    const limits = Object.fromEntries(seeded.subscriptions[0]!.limits.map((l) => [l.name, l]));
    expect(limits.monthly).toMatchObject({ limit: 1100n, used: 6n });
    expect(limits["in-flight"]).toMatchObject({ used: 1n });
    last = await snapshot();
  });

  afterAll(async () => {
    for (const c of byProtocol.values()) c.close();
    redis?.disconnect();
    await db?.end();
    await t?.stop();
  });

  /**
   * Everything a bad request could have changed: what users see (GetLimits with the used counters, wallets, grants
   * and keys; the ledger; posting totals) and, underneath, every row of every table and every Redis key of the app.
   */
  async function snapshot() {
    const [limits, ledger, totals, tables, counters] = await Promise.all([
      g.quota.getLimits({ accountId: x.s.accountId }),
      g.admin.listLedger({ pageSize: 500 }, ADMIN),
      t.app.db.postingTotals(),
      tableDigests(db),
      redisDigest(redis, t.redisPrefix),
    ]);
    limits.asOf = undefined;
    return { limits, ledger, totals, tables, counters };
  }

  for (const protocol of PROTOCOLS) {
    describe(protocol, () => {
      for (const [rpc, cases] of Object.entries(CASES)) {
        describe(rpc, () => {
          for (const c of cases) {
            it(c.name, async () => {
              const client = byProtocol.get(protocol)!;
              const before = last;
              const got: Got = await c.call(client, x).then(
                (res) => ({ ok: true as const, res }),
                (e: unknown) => ({ ok: false as const, code: codeOf(e), message: messageOf(e), reason: reasonOf(e) }),
              );
              const wants = Array.isArray(c.want) ? c.want : [c.want];
              expect.soft(wants.some((w) => matches(w, got)), `got ${describeGot(got)}; wanted ${wants.map(describeWant).join(" or ")}`).toBe(true);
              const after = await snapshot();
              last = after; // a case that changed the state fails alone, not every case after it
              expect(after, "state changed").toEqual(before);
            });
          }
        });
      }
    });
  }
});
