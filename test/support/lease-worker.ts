/**
 * A client process that admits calls by local decisions on leases, for the multi-process lease test. Usage:
 *   node test/support/lease-worker.ts '<json job>'
 * It takes a lease, admits up to its grant locally (sometimes fewer: unused calls go back), settles it in the same
 * call that takes the next one, and stops when the server grants nothing more (or at its deadline). Prints one JSON
 * line: calls admitted locally, leases taken, and the first and last local decision times (to check overlap).
 */
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { Decision, DenyReason } from "../../src/gen/quota/v1/types_pb.ts";
import { clients } from "./clients.ts";

export interface LeaseJob {
  grpc: number;
  http: number;
  apiKey: string;
  product: string;
  method: string;
  ask: number;
  startAt: number;
  deadlineMs: number;
  /** Every n-th lease uses only half of its grant (the rest is returned). */
  halfEvery: number;
}

export interface LeaseWorkerResult {
  admitted: number;
  leases: number;
  returned: number;
  /** Calls given back by this process's last close (sent with the call that was denied, or at its deadline). */
  lastReturned: number;
  lastReason: string;
  firstAt: number;
  lastAt: number;
}

const job = JSON.parse(process.argv[2]!) as LeaseJob;
const c = clients("grpc-js", { grpc: job.grpc, http: job.http });
const out: LeaseWorkerResult = { admitted: 0, leases: 0, returned: 0, lastReturned: 0, lastReason: "", firstAt: 0, lastAt: 0 };
await new Promise((r) => setTimeout(r, Math.max(0, job.startAt - Date.now())));
const stopAt = Date.now() + job.deadlineMs;
let close: Array<{ leaseId: string; usedCalls: bigint }> = [];
for (let n = 0; Date.now() < stopAt; n++) {
  const a = await c.quota.lease({ apiKey: job.apiKey, product: job.product, method: job.method, calls: BigInt(job.ask), close });
  close = [];
  if (a.decision !== Decision.ALLOWED) {
    out.lastReason = Object.entries(DenyReason).find(([, v]) => v === a.reason)?.[0] ?? String(a.reason);
    break;
  }
  out.leases++;
  const granted = Number(a.grantedCalls);
  const use = n % job.halfEvery === job.halfEvery - 1 ? Math.floor(granted / 2) : granted;
  const expiresAt = timestampMs(a.expiresAt!);
  let used = 0;
  // Local decisions: each is admitted only while the lease has calls left and has not ended.
  for (let i = 0; i < use && Date.now() < expiresAt; i++) {
    used++;
    const now = Date.now();
    if (!out.firstAt) out.firstAt = now;
    out.lastAt = now;
  }
  out.admitted += used;
  out.returned += granted - used;
  out.lastReturned = granted - used;
  close = [{ leaseId: a.leaseId, usedCalls: BigInt(used) }];
  await new Promise((r) => setTimeout(r, 1)); // let the others in
}
if (close.length > 0) await c.quota.lease({ apiKey: job.apiKey, product: job.product, method: job.method, calls: 0n, close });
c.close();
process.stdout.write(`${JSON.stringify(out)}\n`);
process.exit(0);
