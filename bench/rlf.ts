/**
 * Scenario (b): what a Node user would otherwise pick — rate-limiter-flexible's RateLimiterRedis.consume() in the
 * calling process (one rate limit per call, no transport), on the same Redis, `concurrency` calls in flight over
 * `keys` keys round-robin, bounded by `calls` and `seconds`.
 *
 *   node bench/rlf.ts '{"redisUrl":"...","keys":10,"concurrency":64,"calls":20000,"seconds":5}'
 */
import { Redis } from "ioredis";
import { RateLimiterRedis } from "rate-limiter-flexible";
import { summarize } from "./lib/stats.ts";

const spec = JSON.parse(process.argv[2]!) as { redisUrl: string; keys: number; concurrency: number; calls: number; seconds: number };
const calls = Math.min(spec.calls, 5_000_000);
const redis = new Redis(spec.redisUrl, { enableAutoPipelining: true, maxRetriesPerRequest: 1 });
const limiter = new RateLimiterRedis({ storeClient: redis, keyPrefix: `rlf${process.pid}`, points: 1_000_000_000, duration: 60 });
const keys = Array.from({ length: Math.max(1, spec.keys) }, (_, i) => `k${i}`);
await redis.ping();

let next = 0;
let done = 0;
let allowed = 0;
let denied = 0;
let errors = 0;
const latencies = new Float64Array(calls);
if (process.argv[3] === "--handshake") {
  console.log("ready");
  await new Promise<void>((resolve) => process.stdin.once("data", () => resolve()));
}
const cpu0 = process.cpuUsage();
const started = performance.now();
const deadline = started + Math.min(spec.seconds, 300) * 1000;
await Promise.all(
  Array.from({ length: Math.max(1, Math.min(spec.concurrency, 4096)) }, async () => {
    while (next < calls && performance.now() < deadline) {
      const i = next++;
      const t0 = performance.now();
      try {
        await limiter.consume(keys[i % keys.length]!, 1);
        allowed++;
      } catch (e) {
        if (e instanceof Error) errors++;
        else denied++; // a RateLimiterRes: the limit said no
      }
      latencies[done++] = performance.now() - t0;
    }
  }),
);
const elapsed = (performance.now() - started) / 1000;
const cpu = process.cpuUsage(cpu0);
redis.disconnect();
console.log(
  JSON.stringify({
    ops: done,
    rpcs: done,
    errors,
    allowed,
    denied,
    shed: 0,
    seconds: Math.round(elapsed * 1000) / 1000,
    opsPerSecond: Math.round(done / elapsed),
    rpcsPerSecond: Math.round(done / elapsed),
    latencyMs: summarize(latencies, done),
    cpuSeconds: (cpu.user + cpu.system) / 1e6,
  }),
);
process.exit(0);
