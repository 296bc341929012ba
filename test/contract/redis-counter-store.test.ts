import { RedisCounterStore } from "../../src/store/redis/redis-counter-store.ts";
import { testRedis } from "../support/redis.ts";
import { describeCounterStore } from "./counter-store.contract.ts";
import { describeCounterStoreProperties, propertyRuns } from "./counter-store.property.ts";

describeCounterStore("RedisCounterStore", async (clock) => {
  const { redis, prefix, cleanup } = await testRedis();
  const store = new RedisCounterStore(redis, { keyPrefix: prefix, clock });
  return {
    store,
    wipe: async () => {
      const keys = await redis.keys(`${prefix}*`);
      if (keys.length > 0) await redis.del(...keys);
    },
    cleanup,
  };
});

describeCounterStoreProperties(
  "RedisCounterStore",
  async (clock) => {
    const { redis, prefix, cleanup } = await testRedis();
    return { store: new RedisCounterStore(redis, { keyPrefix: prefix, clock }), cleanup };
  },
  propertyRuns(200),
);
