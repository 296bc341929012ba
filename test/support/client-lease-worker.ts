/**
 * A calling service that admits through @quota-authority/client with `leases` on, for the multi-process client lease
 * test. Usage: node test/support/client-lease-worker.ts '<json job>'
 * It admits calls in bursts of `burst` concurrent checkAndReserve calls until the quota denies one (or its deadline),
 * then closes the client (settling its lease) and prints one JSON line: calls admitted (and how many of them
 * locally), Lease and CheckAndReserve RPCs sent.
 */
import { createQuotaClient } from "../../packages/client/src/index.ts";

export interface ClientLeaseJob {
  address: string;
  token: string;
  apiKey: string;
  product: string;
  method: string;
  calls: number;
  burst: number;
  startAt: number;
  deadlineMs: number;
}

export interface ClientLeaseResult {
  admitted: number;
  local: number;
  denied: number;
  leaseRpcs: number;
  checkRpcs: number;
}

const job = JSON.parse(process.argv[2]!) as ClientLeaseJob;
const out: ClientLeaseResult = { admitted: 0, local: 0, denied: 0, leaseRpcs: 0, checkRpcs: 0 };
const client = createQuotaClient({
  address: job.address,
  token: job.token,
  deadlineMs: 5000,
  leases: { calls: job.calls, ttlMs: 10_000 },
  interceptors: [
    (next) => (req) => {
      if (req.method.name === "Lease") out.leaseRpcs++;
      if (req.method.name === "CheckAndReserve") out.checkRpcs++;
      return next(req);
    },
  ],
});
await new Promise((r) => setTimeout(r, Math.max(0, job.startAt - Date.now())));
const stopAt = Date.now() + job.deadlineMs;
let done = false;
while (!done && Date.now() < stopAt) {
  const results = await Promise.all(Array.from({ length: job.burst }, () => client.checkAndReserve({ apiKey: job.apiKey, product: job.product, method: job.method })));
  for (const r of results) {
    if (r.allowed) {
      out.admitted++;
      if (r.lease) out.local++;
    } else {
      out.denied++;
      if (r.reason !== "QUOTA_EXHAUSTED") throw new Error(`unexpected denial ${r.reason}`);
      done = true;
    }
  }
}
await client.close();
process.stdout.write(`${JSON.stringify(out)}\n`);
