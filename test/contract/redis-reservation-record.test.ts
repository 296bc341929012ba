/**
 * The layout of a stored open reservation (the `r:<id>` field of an account's `rs` hash). reserve.lua writes it from
 * pieces (a description's part packed once per script); settle and replay in lib.lua read it with
 * `cmsgpack.unpack`, and so do the scripts of every earlier version: during a rolling update or a rollback a replica
 * running the previous scripts settles records the current ones wrote. So what the record DECODES to is a contract:
 * this test reads raw records back through Redis's own `cmsgpack.unpack` and compares them with the layout
 * (docs/architecture.md, the keys table), for a single call and for a grouped one (several calls in one script).
 */
import { Redis } from "ioredis";
import { afterAll, beforeAll, expect, it } from "vitest";
import type { CounterLimit, ReserveCommand } from "../../src/core/counter-store.ts";
import { RedisCounterStore } from "../../src/store/redis/redis-counter-store.ts";
import { PrivateRedis } from "../support/redis-server.ts";

const NOW = 1_800_000_000_000;
const DAY = 86_400_000;
const bounds = [NOW - 60 * DAY, NOW - DAY, NOW + 29 * DAY, NOW + 59 * DAY] as const;
const limits: CounterLimit[] = [
  { id: "s:sub-1:monthly", kind: "QUOTA", meter: "units", amount: 5n, period: { type: "fixed", bounds } },
  { id: "k:key-1:cap", kind: "QUOTA", meter: "units", amount: 5n, limit: 1_000n, overage: true, period: { type: "rolling", windowMs: 3_600_000, bucketMs: 60_000 } },
  { id: "k:key-1:rps", kind: "RATE", meter: "calls", amount: 1n, limit: 100n, windowMs: 1_000 },
  { id: "k:key-1:inflight", kind: "CONCURRENCY", meter: "calls", amount: 1n, limit: 100n },
];

let server: PrivateRedis;
let redis: Redis;
let store: RedisCounterStore;
beforeAll(async () => {
  server = await PrivateRedis.start();
  redis = new Redis(server.port, "127.0.0.1", { enableAutoPipelining: true });
  store = new RedisCounterStore(redis, { keyPrefix: "rec:", clock: () => NOW });
  await store.restore("acct-1", [{ limitId: "s:sub-1:monthly", base: 1_000_000n, basePriority: 100, grants: [] }], {});
});
afterAll(async () => {
  redis.disconnect();
  await server.stop();
});

const call = (id: string): ReserveCommand => ({
  accountId: "acct-1", reservationId: id, mode: "ENFORCE", ttlMs: 60_000, product: "api", expiryPolicy: "refund", gates: [], limits,
});

/** The record as Redis's cmsgpack decodes it, through cjson (an empty Lua table encodes as {}). */
async function decoded(id: string): Promise<unknown> {
  const json = (await redis.eval("return cjson.encode(cmsgpack.unpack(redis.call('HGET', KEYS[1], ARGV[1])))", 1, "rec:{a:acct-1}:rs", `r:${id}`)) as string;
  return JSON.parse(json);
}

/** The layout every version reads: expiry, policy, product, meters, then per QUOTA/BUDGET limit the limit settling
 * needs with the parts consumed and the window, per CONCURRENCY limit its id (RATE needs nothing to settle). */
const layout = (monthlyPart: unknown[], capPart: unknown[]) => ({
  e: NOW + 60_000,
  p: "refund",
  pr: "api",
  m: { units: "5", calls: "1" },
  en: [
    { l: { id: "s:sub-1:monthly", kind: "QUOTA", meter: "units", period: { type: "fixed", bounds: bounds.map(String) }, overage: false }, pa: monthlyPart, w: String(bounds[1]) },
    { l: { id: "k:key-1:cap", kind: "QUOTA", meter: "units", limit: "1000", period: { type: "rolling", windowMs: "3600000", bucketMs: "60000" }, overage: true }, pa: capPart, w: "0" },
    { l: { id: "k:key-1:inflight", kind: "CONCURRENCY" }, pa: {}, w: "0" },
  ],
});
const bucket = `b:${Math.floor(NOW / 60_000) * 60_000}`;

it("a single call's reservation decodes to the layout every version of the scripts reads", async () => {
  const r = await store.reserve(call("r~single"));
  expect(r.outcome).toBe("ALLOWED");
  expect(await decoded("r~single")).toEqual(layout([["b", "5"]], [[bucket, "5"]]));
});

it("each call of a grouped script (its descriptions packed once) stores the same layout", async () => {
  const ids = ["r~g1", "r~g2", "r~g3"];
  const answers = await Promise.all(ids.map((id) => store.reserve(call(id))));
  expect(answers.map((a) => a.outcome)).toEqual(["ALLOWED", "ALLOWED", "ALLOWED"]);
  for (const id of ids) expect(await decoded(id)).toEqual(layout([["b", "5"]], [[bucket, "5"]]));
  // and they settle: Release reads them back
  const released = await Promise.all(ids.map((id) => store.release({ accountId: "acct-1", reservationId: id, outcome: "COMMIT", actual: { units: 2n } })));
  expect(released.map((x) => [x.outcome, x.charged])).toEqual(ids.map(() => ["SETTLED", { units: 2n, calls: 1n }]));
});

it("a shadow call that would be denied stores an empty reservation in the same layout", async () => {
  const denied = limits.map((l) => (l.kind === "RATE" ? { ...l, limit: 0n } : l));
  const r = await store.reserve({ ...call("r~shadow"), mode: "SHADOW", limits: denied });
  expect(r.shadowReason).toBe("RATE_LIMITED");
  expect(await decoded("r~shadow")).toEqual({ e: NOW + 60_000, p: "refund", pr: "api", m: {}, en: {} });
});
