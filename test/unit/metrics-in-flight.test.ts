/**
 * quota_reservations_in_flight counts the reservations made through this process that are neither released nor
 * past their TTL. What it remembers per reservation must not outlive the TTL: it used to be pruned only when
 * Prometheus scraped the gauge, so a process nobody scraped (or scraped rarely) kept up to 1,000,000 reservation
 * ids (~120 MB of heap) whatever its TTLs, and every call added an old-generation entry for the GC to walk.
 */
import { Registry } from "prom-client";
import { describe, expect, it } from "vitest";
import { newReservationId } from "../../src/core/ids.ts";
import type { KeyCache } from "../../src/core/key-cache.ts";
import { Decision, DenyReason, LimitKind, Mode } from "../../src/gen/quota/v1/types_pb.ts";
import { createMetrics, instrumentApi } from "../../src/observability/metrics.ts";
import { noopTracer } from "../../src/observability/tracing.ts";
import type { Api } from "../../src/transport/api.ts";
import { ANSWER_PLAN } from "../../src/transport/quota-api.ts";
import { settled } from "../support/memory.ts";

function setup() {
  let t = 1_000_000;
  const now = () => t;
  const metrics = createMetrics(new Registry(), now);
  let n = 0;
  // ids answered in order (made by this process unless a test says otherwise)
  const ids: string[] = [];
  const api = {
    quota: {
      checkAndReserve: async () => ({ decision: Decision.ALLOWED, reason: 0, shadowReason: 0, failOpen: false, reservationId: ids[n++] ?? newReservationId("acct_1", "abcdefghijklmnop"), limits: [] }),
      release: async () => ({}),
    },
    admin: {},
  } as unknown as Api;
  const keys = { peek: () => undefined } as unknown as KeyCache;
  const wrapped = instrumentApi(api, { metrics, tracer: noopTracer(), keys, now });
  const reserve = (ttlSeconds: number) => (wrapped.quota.checkAndReserve as (r: unknown, c: unknown) => Promise<unknown>)({ apiKey: "x", mode: 0, reservationTtl: { seconds: BigInt(ttlSeconds), nanos: 0 } }, {});
  const release = (reservationId: string) => (wrapped.quota.release as (r: unknown, c: unknown) => Promise<unknown>)({ reservationId }, {});
  const gauge = async () => (await metrics.reservationsInFlight.get()).values[0]!.value;
  return { metrics, reserve, release, gauge, ids, advance: (ms: number) => void (t += ms) };
}

describe("quota_decisions_total", () => {
  it("labels a decision with the plan the call was decided by, even when the key is no longer in the cache", async () => {
    const metrics = createMetrics(new Registry());
    const answer = { decision: Decision.ALLOWED, reason: 0, shadowReason: 0, failOpen: false, reservationId: "", limits: [] };
    ANSWER_PLAN.set(answer, "pro");
    const api = { quota: { checkAndReserve: async () => answer }, admin: {} } as unknown as Api;
    // A key load overtaken by a change-bus message is used once, not cached: peek finds nothing (found in CI).
    const keys = { peek: () => undefined } as unknown as KeyCache;
    const wrapped = instrumentApi(api, { metrics, tracer: noopTracer(), keys });
    await (wrapped.quota.checkAndReserve as (r: unknown, c: unknown) => Promise<unknown>)({ apiKey: "qa_abcdefghijklmnop_x", mode: 0 }, {});
    const values = (await metrics.decisions.get()).values;
    expect(values.map((v) => v.labels.plan)).toEqual(["pro"]); // was [""]
  });

  it("counts every decision per label set, also those made between two collections (they are counted locally until one)", async () => {
    const metrics = createMetrics(new Registry());
    const allowed = { decision: Decision.ALLOWED, reason: 0, shadowReason: 0, failOpen: false, reservationId: "", limits: [] };
    const denied = { decision: Decision.DENIED, reason: DenyReason.QUOTA_EXHAUSTED, shadowReason: 0, failOpen: false, reservationId: "", limits: [{ kind: LimitKind.QUOTA, exceeded: true }] };
    let next: object = allowed;
    const api = { quota: { checkAndReserve: async () => ({ ...next }) }, admin: {} } as unknown as Api;
    const keys = { peek: () => undefined } as unknown as KeyCache;
    const wrapped = instrumentApi(api, { metrics, tracer: noopTracer(), keys });
    const call = (mode: Mode) => (wrapped.quota.checkAndReserve as (r: unknown, c: unknown) => Promise<unknown>)({ apiKey: "x", mode }, {});
    const series = async () =>
      Object.fromEntries((await metrics.decisions.get()).values.map((v) => [`${v.labels.decision} ${v.labels.reason} ${v.labels.mode} ${v.labels.limit_kind}`, v.value]));
    await call(Mode.MODE_UNSPECIFIED);
    await call(Mode.ENFORCE); // the same series: an unspecified mode is ENFORCE
    next = denied;
    await call(Mode.ENFORCE);
    expect(await series()).toEqual({ "ALLOWED  ENFORCE ": 2, "DENIED QUOTA_EXHAUSTED ENFORCE QUOTA": 1 });
    await call(Mode.SHADOW);
    next = allowed;
    await call(Mode.ENFORCE);
    expect(await series()).toEqual({ "ALLOWED  ENFORCE ": 3, "DENIED QUOTA_EXHAUSTED ENFORCE QUOTA": 1, "DENIED QUOTA_EXHAUSTED SHADOW QUOTA": 1 });
  });

  it("a reset drops what was counted since the last scrape too (decisions and key-cache lookups are counted locally)", async () => {
    const registry = new Registry();
    const metrics = createMetrics(registry);
    const total = async (name: string) => ((await registry.getMetricsAsJSON()).find((m) => m.name === name)!.values as Array<{ value: number }>).reduce((a, v) => a + v.value, 0);
    metrics.decided.count(metrics.decisions, "pro", Decision.ALLOWED, DenyReason.DENY_REASON_UNSPECIFIED, Mode.ENFORCE, false, undefined);
    metrics.keyCacheLookup(true);
    registry.resetMetrics();
    expect(await total("quota_decisions_total")).toBe(0);
    expect(await total("quota_key_cache_lookups_total")).toBe(0);
    // and counting goes on after it
    metrics.decided.count(metrics.decisions, "pro", Decision.ALLOWED, DenyReason.DENY_REASON_UNSPECIFIED, Mode.ENFORCE, false, undefined);
    metrics.keyCacheLookup(false);
    expect(await total("quota_decisions_total")).toBe(1);
    expect(await total("quota_key_cache_lookups_total")).toBe(1);
  });
});

describe("quota_reservations_in_flight", () => {
  it("forgets reservations past their TTL as new ones are made, without waiting for a scrape", async () => {
    const { metrics, reserve, advance } = setup();
    for (let i = 0; i < 1000; i++) await reserve(1);
    expect(metrics.inFlight.tracked).toBe(1000);
    advance(1001);
    await reserve(1);
    expect(metrics.inFlight.tracked).toBe(1); // was 1,001: kept until the next scrape
  });

  it("still counts every reservation within its TTL, whatever their order of expiry", async () => {
    const { metrics, reserve, advance } = setup();
    await reserve(60); // a long one first: it must not hide the short ones behind it from the count
    for (let i = 0; i < 10; i++) await reserve(1);
    advance(500);
    await reserve(1);
    expect(metrics.inFlight.tracked).toBe(12);
    advance(1000);
    await reserve(1);
    // the 10 first short ones and the one made at +500 ms are past their TTL; the scrape counts exactly
    expect((await metrics.reservationsInFlight.get()).values[0]!.value).toBe(2);
  });

  it("drops a reservation released through this process, and counts another process's ids until their TTL", async () => {
    const { reserve, release, gauge, ids, advance } = setup();
    const mine = newReservationId("acct_1", "abcdefghijklmnop");
    const theirs = "r~acct_1~abcdefghijklmnop~AAAAAAAAAAAAAAAAAAAAAA"; // another process's prefix
    ids.push(mine, theirs);
    await reserve(10);
    await reserve(10);
    expect(await gauge()).toBe(2);
    await release(mine);
    expect(await gauge()).toBe(1);
    await release(mine); // twice: still one
    expect(await gauge()).toBe(1);
    advance(10_000);
    expect(await gauge()).toBe(0);
    await release(theirs);
    expect(await gauge()).toBe(0);
  });

  it("keeps a few bytes per reservation in flight, not its id (was ~150 B each: a map of id strings)", async () => {
    const { metrics, reserve, gauge } = setup();
    for (let i = 0; i < 1000; i++) await reserve(600);
    const before = await settledBytes();
    for (let i = 0; i < 100_000; i++) await reserve(600);
    const after = await settledBytes();
    expect(await gauge()).toBe(101_000);
    expect(metrics.inFlight.tracked).toBe(101_000);
    // a small-integer key and value in the map's backing store (~38 B with its slack; it doubles as it grows), no
    // object of its own; the ids are garbage once answered
    expect((after - before) / 100_000).toBeLessThan(60);
  });
});

/** Heap in use plus ArrayBuffers once garbage is collected (test/support/memory.ts). */
const settledBytes = () => settled((m) => m.heapUsed + m.arrayBuffers);
