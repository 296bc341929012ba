/**
 * The key cache and GetLimits under cheap abuse (issue 7, item 16): unknown key ids are remembered briefly and
 * cannot push real keys out (LRU with a bound); a secret is hashed once per cached key, not once per call; GetLimits
 * is rate limited per key and reads the account from a cache the change bus invalidates.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { status } from "@grpc/grpc-js";
import { Decision, DenyReason } from "../../src/gen/quota/v1/types_pb.ts";
import { startTestApp, type TestApp } from "../support/app.ts";
import { clients, codeOf, type Clients } from "../support/clients.ts";
import { addKey, applyPlans, deposit, seedAccount } from "../support/fixtures.ts";

const PLANS = `
plans:
  - id: cache-plan
    name: Cache
    limits:
      - { name: monthly, kind: quota, limit: 100000, period: monthly }
    topUp: { limit: monthly, increment: 100, price: { units: 100, amount: "1.00" } }
`;

/** A well-formed key id that exists nowhere (16 characters of a-z 2-7), distinct for every `i`. */
const B32 = "abcdefghijklmnopqrstuvwxyz234567";
const randomKeyId = (i: number) => {
  let tail = "";
  for (let v = i, n = 0; n < 12; n++, v = Math.floor(v / 32)) tail = B32[v % 32]! + tail;
  return `zzzz${tail}`;
};

describe("key cache and GetLimits (gRPC, Postgres, in-memory counters)", () => {
  let t: TestApp;
  let c: Clients;
  beforeAll(async () => {
    t = await startTestApp({ redis: false, env: { QUOTA_KEY_CACHE_MAX_ENTRIES: "50", QUOTA_KEY_CACHE_NEGATIVE_TTL_MS: "60000", QUOTA_GET_LIMITS_RATE_PER_MINUTE: "5" } });
    c = clients("grpc-js", { grpc: t.app.grpcPort, http: t.app.httpPort });
    await applyPlans(c, PLANS);
  });
  afterAll(async () => {
    c?.close();
    await t?.stop();
  });

  it("an unknown key id costs one Postgres lookup, however often it is presented", async () => {
    const before = t.app.keys.loads;
    for (let i = 0; i < 30; i++) {
      const r = await c.quota.checkAndReserve({ keyId: randomKeyId(1), product: "p", method: "m" });
      expect(r.reason).toBe(DenyReason.KEY_INVALID);
    }
    expect(t.app.keys.loads - before).toBe(1);
  });

  it("first touches of many keys made together load them in one Postgres round, and their key contexts share one plan", async () => {
    const s = await seedAccount(c, "cache-plan");
    const made = [{ apiKey: s.apiKey, keyId: s.keyId }];
    for (let i = 0; i < 29; i++) made.push(await addKey(c, s.accountId, s.subscriptionId));
    const keys = made.map((k) => k.apiKey);
    const loads = t.app.keys.loads;
    const rounds = t.app.keys.loadRounds;
    const r = await c.quota.checkAndReserveBatch({ requests: keys.map((apiKey) => ({ apiKey, product: "p", method: "m" })) });
    expect(r.results.map((x) => x.result.case === "response" && x.result.value.decision)).toEqual(keys.map(() => Decision.ALLOWED));
    expect(t.app.keys.loads - loads).toBe(30);
    expect(t.app.keys.loadRounds - rounds).toBe(1); // before: one round (3 queries) per key
    const plans = new Set(made.map((k) => t.app.keys.peek(k.keyId)?.plan));
    expect(plans.size).toBe(1); // one parsed plan object for all 30 keys (not one copy per key)
  });

  it("first touches of many accounts made together restore their counters in one Postgres round (not ~8 queries per account)", async () => {
    const seeded = [];
    for (let i = 0; i < 30; i++) seeded.push(await seedAccount(c, "cache-plan"));
    const dbOps = async () => {
      const m = (await t.app.metrics.getMetricsAsJSON()).find((x) => x.name === "quota_db_duration_seconds");
      const out: Record<string, number> = {};
      for (const v of (m?.values ?? []) as Array<{ metricName?: string; labels: Record<string, string>; value: number }>) if (v.metricName === "quota_db_duration_seconds_count") out[v.labels.op!] = v.value;
      return out;
    };
    const before = await dbOps();
    const r = await c.quota.checkAndReserveBatch({ requests: seeded.map((s) => ({ apiKey: s.apiKey, product: "p", method: "m" })) });
    expect(r.results.map((x) => x.result.case === "response" && x.result.value.decision)).toEqual(seeded.map(() => Decision.ALLOWED));
    // The calls do not wait for the accounts to be marked synced (one UPDATE after their restores): wait for it here.
    const made = await vi.waitFor(async () => {
      const after = await dbOps();
      const m = Object.fromEntries(Object.entries(after).map(([op, n]) => [op, n - (before[op] ?? 0)]).filter(([, n]) => (n as number) > 0));
      expect(m.markCapacitySyncedMany).toBe(1);
      return m;
    }, { timeout: 5_000, interval: 20 });
    // Before: loadAccountConfig, loadUsageSnapshot and markCapacitySynced once per account (30 of each).
    expect(made).toEqual({ loadKeyContexts: 1, loadAccountConfigs: 1, loadUsageSnapshots: 1, markCapacitySyncedMany: 1 });
    // Each account was restored with its own capacity: a second call sees the first one's usage.
    const again = await c.quota.checkAndReserve({ apiKey: seeded[7]!.apiKey, product: "p", method: "m" });
    expect(again.limits[0]?.used).toBe(2n);
  });

  it("random key ids cannot push a key in use out of the cache (LRU), and the cache stays within its bound", async () => {
    const s = await seedAccount(c, "cache-plan");
    await c.quota.checkAndReserve({ apiKey: s.apiKey, product: "p", method: "m" });
    const before = t.app.keys.loads;
    for (let i = 0; i < 200; i++) {
      await c.quota.checkAndReserve({ keyId: randomKeyId(1000 + i), product: "p", method: "m" });
      expect((await c.quota.checkAndReserve({ apiKey: s.apiKey, product: "p", method: "m" })).decision).toBe(Decision.ALLOWED);
    }
    // One lookup per random id; none for the key in use.
    expect(t.app.keys.loads - before).toBe(200);
    expect(t.app.keys.size).toBeLessThanOrEqual(50);
  });

  it("the API key secret is hashed once per cached key, not once per call; a wrong secret is still refused", async () => {
    const s = await seedAccount(c, "cache-plan");
    const before = t.app.keys.secretHashes;
    for (let i = 0; i < 20; i++) expect((await c.quota.checkAndReserve({ apiKey: s.apiKey, product: "p", method: "m" })).decision).toBe(Decision.ALLOWED);
    expect(t.app.keys.secretHashes - before).toBe(1);
    const wrong = `${s.apiKey.slice(0, -1)}${s.apiKey.endsWith("A") ? "B" : "A"}`;
    expect((await c.quota.checkAndReserve({ apiKey: wrong, product: "p", method: "m" })).reason).toBe(DenyReason.KEY_INVALID);
    expect((await c.quota.checkAndReserve({ apiKey: s.apiKey, product: "p", method: "m" })).decision).toBe(Decision.ALLOWED);
  });

  it("GetLimits: the account is read once while unchanged, again after a TopUp; at most N calls per minute per key", async () => {
    const s = await seedAccount(c, "cache-plan");
    const other = await addKey(c, s.accountId, s.subscriptionId);
    await deposit(c, s.accountId, "prepaid", 5n);
    const before = t.app.keys.configLoads;
    for (let i = 0; i < 3; i++) await c.quota.getLimits({ apiKey: s.apiKey });
    expect(t.app.keys.configLoads - before).toBe(1);
    await c.quota.topUp({ apiKey: s.apiKey, idempotencyKey: "cache-topup", target: { case: "quota", value: { lines: [{ units: 100n }] } }, funding: { case: "fromWallet", value: {} } });
    const after = await c.quota.getLimits({ apiKey: s.apiKey });
    expect(after.wallets.find((w) => w.kind === "prepaid")!.balance!.units).toBe(4n);
    expect(t.app.keys.configLoads - before).toBe(2);
    await c.quota.getLimits({ apiKey: s.apiKey }); // the 5th call of this key this minute
    const sixth = await c.quota.getLimits({ apiKey: s.apiKey }).then(() => undefined, (e: unknown) => e);
    expect(codeOf(sixth)).toBe(status.RESOURCE_EXHAUSTED);
    // Another key of the same account has its own budget.
    expect((await c.quota.getLimits({ apiKey: other.apiKey })).accountId).toBe(s.accountId);
  });
});
