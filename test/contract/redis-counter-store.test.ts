import { expect, it } from "vitest";
import { RedisCounterStore } from "../../src/store/redis/redis-counter-store.ts";
import { DECLARED_KEYS_GUARD } from "../support/redis-guard.ts";
import { testRedis } from "../support/redis.ts";
import { describeCounterStore } from "./counter-store.contract.ts";
import { describeCounterStoreProperties, propertyRuns } from "./counter-store.property.ts";

describeCounterStore("RedisCounterStore", async (clock) => {
  const { redis, prefix, cleanup } = await testRedis();
  // Every script runs under the guard: the whole suite fails if any script touches a key it did not declare.
  const store = new RedisCounterStore(redis, { keyPrefix: prefix, clock, scriptPrelude: DECLARED_KEYS_GUARD });
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
    return { store: new RedisCounterStore(redis, { keyPrefix: prefix, clock, scriptPrelude: DECLARED_KEYS_GUARD }), cleanup };
  },
  propertyRuns(200),
);

it("the declared-keys guard refuses a script that touches a key it did not declare", async () => {
  const { redis, prefix, cleanup } = await testRedis();
  try {
    const lua = `${DECLARED_KEYS_GUARD}\nredis.call('GET', KEYS[1])\nreturn redis.call('GET', '${prefix}undeclared')`;
    await expect(redis.eval(lua, 1, `${prefix}declared`)).rejects.toThrow(/undeclared key/);
    expect(await redis.eval(`${DECLARED_KEYS_GUARD}\nreturn redis.call('SET', KEYS[1], 'x')`, 1, `${prefix}declared`)).toBe("OK");
  } finally {
    await cleanup();
  }
});
