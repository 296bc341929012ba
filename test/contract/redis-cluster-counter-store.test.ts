/**
 * The counter-store contract and property suites against a real 3-master Redis Cluster started here (each account's
 * keys share one hash tag, so one slot; Redis refuses a script reaching a key of another slot), with the
 * declared-keys guard on every script.
 */
import { afterAll, beforeAll } from "vitest";
import type { Cluster } from "ioredis";
import { RedisCounterStore } from "../../src/store/redis/redis-counter-store.ts";
import { DECLARED_KEYS_GUARD } from "../support/redis-guard.ts";
import { PrivateRedisCluster } from "../support/redis-cluster.ts";
import { describeCounterStore } from "./counter-store.contract.ts";
import { describeCounterStoreProperties } from "./counter-store.property.ts";

let cluster: PrivateRedisCluster;
const clients: Cluster[] = [];
beforeAll(async () => {
  cluster = await PrivateRedisCluster.start(3);
}, 60_000);
afterAll(async () => {
  for (const c of clients) c.disconnect();
  await cluster?.stop();
});

function connect(): Cluster {
  const c = cluster.connect();
  clients.push(c);
  return c;
}

describeCounterStore("RedisCounterStore on a 3-master cluster", async (clock) => {
  const redis = connect();
  const store = new RedisCounterStore(redis, { keyPrefix: "qa:", clock, scriptPrelude: DECLARED_KEYS_GUARD });
  return {
    store,
    wipe: async () => {
      // every master holds some accounts: delete on each
      for (const node of redis.nodes("master")) {
        const keys = await node.keys("qa:*");
        for (const k of keys) await node.del(k);
      }
    },
    cleanup: async () => {},
  };
});

describeCounterStoreProperties(
  "RedisCounterStore on a 3-master cluster",
  async (clock) => ({ store: new RedisCounterStore(connect(), { keyPrefix: "qa:", clock, scriptPrelude: DECLARED_KEYS_GUARD }), cleanup: async () => {} }),
  30,
);
