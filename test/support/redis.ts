import { Redis } from "ioredis";
import { TEST_REDIS_URL, uniqueId } from "./env.ts";

/** Deletes exactly the keys under `prefix` (never anything a test did not create). */
export async function deleteRedisPrefix(prefix: string, client?: Redis): Promise<void> {
  const redis = client ?? new Redis(TEST_REDIS_URL);
  let cursor = "0";
  do {
    const [next, keys] = await redis.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 1000);
    cursor = next;
    if (keys.length > 0) await redis.del(...keys);
  } while (cursor !== "0");
  if (!client) redis.disconnect();
}

/** A Redis connection plus a key prefix that only this test file uses; `cleanup` deletes exactly those keys. */
export async function testRedis(): Promise<{ redis: Redis; prefix: string; cleanup: () => Promise<void> }> {
  const redis = new Redis(TEST_REDIS_URL, { enableAutoPipelining: true, lazyConnect: false });
  const prefix = `qa-test:${uniqueId("")}:`;
  return {
    redis,
    prefix,
    cleanup: async () => {
      await deleteRedisPrefix(prefix, redis);
      redis.disconnect();
    },
  };
}
