/**
 * A load-generating client process for multi-process exactness tests. Usage:
 *   node test/support/load-worker.ts '<json job>'
 * The job names the server ports to spread calls over and what to call. The worker opens its connections (one
 * GetLimits per server, which changes nothing), prints "ready", waits for "go <ms>" on stdin (the parent sends it once
 * every worker is ready, with one wall-clock time a moment ahead, so the workers fire together), runs every call
 * concurrently, and prints one JSON line with the outcomes.
 */
import { Decision, DenyReason } from "../../src/gen/quota/v1/types_pb.ts";
import { Outcome } from "../../src/gen/quota/v1/quota_pb.ts";
import { clients, codeOf } from "./clients.ts";

export interface LoadJob {
  servers: Array<{ grpc: number; http: number }>;
  protocol: "grpc-js" | "connect";
  calls:
    | { kind: "reserve"; count: number; apiKey: string; product: string; method: string; estimatedSpendMicros?: string; holdMs?: number }
    | { kind: "topup"; count: number; apiKey: string; keyPrefix: string; distinctKeys: number; units: string };
}

export interface LoadResult {
  allowed: number;
  denied: Record<string, number>;
  errors: Record<string, number>;
  applied: number;
  replayed: number;
  maxInFlight: number;
  /** Wall-clock ms (one machine clock shared by every worker) of the first call sent and the last answer received:
   * the multi-process test checks the workers' calls really overlapped in time. */
  firstSentAt: number;
  lastSettledAt: number;
}

const job = JSON.parse(process.argv[2]!) as LoadJob;
// Exactness is asserted, not latency: on a loaded machine a thousand TopUps serialised on one wallet row may take
// longer than the usual 15 s client deadline, and a call that times out would be counted as an error.
const cs = job.servers.map((p) => clients(job.protocol, p, undefined, "127.0.0.1", 120_000));
const result: LoadResult = { allowed: 0, denied: {}, errors: {}, applied: 0, replayed: 0, maxInFlight: 0, firstSentAt: 0, lastSettledAt: 0 };
let inFlight = 0;
const calls = job.calls;
await Promise.all(cs.map((c) => c.quota.getLimits({ apiKey: calls.apiKey })));
process.stdout.write("ready\n");
// "go <ms>": fire at that wall-clock time (the parent names one a moment ahead for every worker). Reading "go" on four
// stdins, one after another, on a loaded 2-core machine let a worker with 2 calls finish before another started.
await new Promise<void>((resolve) => {
  let buf = "";
  process.stdin.setEncoding("utf8");
  process.stdin.on("data", (d: string) => {
    buf += d;
    const m = /go(?: (\d+))?\n/.exec(buf);
    if (m) setTimeout(resolve, m[1] ? Math.max(0, Number(m[1]) - Date.now()) : 0);
  });
});
await Promise.all(
  Array.from({ length: calls.count }, async (_, i) => {
    const c = cs[i % cs.length]!;
    if (result.firstSentAt === 0) result.firstSentAt = Date.now();
    try {
      if (calls.kind === "reserve") {
        const a = await c.quota.checkAndReserve({
          apiKey: calls.apiKey,
          product: calls.product,
          method: calls.method,
          ...(calls.estimatedSpendMicros ? { estimatedSpendMicros: BigInt(calls.estimatedSpendMicros) } : {}),
        });
        if (a.decision === Decision.ALLOWED) {
          result.allowed++;
          if (calls.holdMs !== undefined) {
            inFlight++;
            result.maxInFlight = Math.max(result.maxInFlight, inFlight);
            await new Promise((r) => setTimeout(r, calls.holdMs));
            inFlight--;
            await c.quota.release({ reservationId: a.reservationId, outcome: Outcome.COMMIT });
          }
        } else {
          const reason = Object.entries(DenyReason).find(([, v]) => v === a.reason)?.[0] ?? String(a.reason);
          result.denied[reason] = (result.denied[reason] ?? 0) + 1;
        }
      } else {
        const topUp = () =>
          c.quota.topUp({
            apiKey: calls.apiKey,
            idempotencyKey: `${calls.keyPrefix}-${i % calls.distinctKeys}`,
            target: { case: "quota", value: { lines: [{ units: BigInt(calls.units) }] } },
            funding: { case: "fromWallet", value: {} },
          });
        // ABORTED (IDEMPOTENCY_IN_PROGRESS): the same key is running on another replica — retry, as clients must.
        let r: Awaited<ReturnType<typeof topUp>> | undefined;
        for (let attempt = 0; !r; attempt++) {
          try {
            r = await topUp();
          } catch (e) {
            if (codeOf(e) !== 10 || attempt >= 100) throw e;
            await new Promise((res) => setTimeout(res, 20 + Math.random() * 80));
          }
        }
        if (r.replayed) result.replayed++;
        else result.applied++;
      }
    } catch (e) {
      const code = String(codeOf(e) ?? (e as Error).message);
      result.errors[code] = (result.errors[code] ?? 0) + 1;
    }
    result.lastSettledAt = Math.max(result.lastSettledAt, Date.now());
  }),
);
for (const c of cs) c.close();
process.stdout.write(`${JSON.stringify(result)}\n`);
process.exit(0);
