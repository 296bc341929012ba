/**
 * A load-generating client process for multi-process exactness tests. Usage:
 *   node test/support/load-worker.ts '<json job>'
 * The job names the server ports to spread calls over and what to call; the worker waits for the start time (so
 * several workers fire together), runs every call concurrently, and prints one JSON line with the outcomes.
 */
import { Decision, DenyReason } from "../../src/gen/quota/v1/types_pb.ts";
import { Outcome } from "../../src/gen/quota/v1/quota_pb.ts";
import { clients, codeOf } from "./clients.ts";

export interface LoadJob {
  servers: Array<{ grpc: number; http: number }>;
  protocol: "grpc-js" | "connect";
  startAt: number;
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
}

const job = JSON.parse(process.argv[2]!) as LoadJob;
const cs = job.servers.map((p) => clients(job.protocol, p));
const result: LoadResult = { allowed: 0, denied: {}, errors: {}, applied: 0, replayed: 0, maxInFlight: 0 };
let inFlight = 0;
await new Promise((r) => setTimeout(r, Math.max(0, job.startAt - Date.now())));
const calls = job.calls;
await Promise.all(
  Array.from({ length: calls.count }, async (_, i) => {
    const c = cs[i % cs.length]!;
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
  }),
);
for (const c of cs) c.close();
process.stdout.write(`${JSON.stringify(result)}\n`);
process.exit(0);
