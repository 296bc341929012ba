import { Redis } from "ioredis";
import { TEST_REDIS_URL, uniqueId } from "./env.ts";

/** A Redis connection plus a key prefix that only this test file uses; `cleanup` deletes exactly those keys. */
export async function testRedis(): Promise<{ redis: Redis; prefix: string; cleanup: () => Promise<void> }> {
  const redis = new Redis(TEST_REDIS_URL, { enableAutoPipelining: true, lazyConnect: false });
  const prefix = `qa-test:${uniqueId("")}:`;
  return {
    redis,
    prefix,
    cleanup: async () => {
      let cursor = "0";
      do {
        const [next, keys] = await redis.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 1000);
        cursor = next;
        if (keys.length > 0) await redis.del(...keys);
      } while (cursor !== "0");
      redis.disconnect();
    },
  };
}
