/**
 * Scenario (f): decisions made in the calling process with leases (QuotaService.Lease, DESIGN §7). One holder per
 * key: it takes a lease of `leaseCalls` calls (or what is granted), admits locally until the lease is used or ends,
 * then closes it in the next Lease call (which also takes a lease). `concurrency` async callers decide round-robin
 * over the keys, each decision an `await` as in (b) (bench/rlf.ts), bounded by `calls` and `seconds`. When the
 * window ends every open lease is closed (Lease with calls = 0), and the key's quota counter is read back
 * (GetLimits) before and after: the counter must have moved by exactly the admitted decisions times the cost per
 * call, and stay within the limit (zero over-admission).
 *
 *   node bench/lease.ts SPEC.json [--handshake]     prints one JSON result line
 *
 * The next lease is taken when `prefetchAt` of the current one is used (default 0: at once; one spare per key), so
 * the callers seldom wait for a Lease RPC (they hold up to 2 leases of units per key: more under-admission near
 * exhaustion, never over-admission); a finished lease is closed by the next Lease call of its key.
 *
 * holder "client" (the default of `npm run bench`): the decisions are `checkAndReserve` calls of the published
 * client, @quota-authority/client with `leases: { calls: leaseCalls, ttlMs }` (what a calling service runs: it takes
 * the next lease when the current one is used up or ends, with no spare, and settles them on `close()`).
 * holder "raw": the hand-written holder below, which keeps a spare lease per key (`prefetchAt`), with no client
 * around it: what the lease protocol allows, for comparison.
 *
 * SPEC: { port, token, keysFile, product, method, limitName, concurrency, calls, seconds, leaseCalls, ttlMs, prefetchAt,
 *         holder }
 * The Lease and GetLimits messages go through protobuf-es (one Lease RPC per `leaseCalls` decisions: their cost per
 * decision is small); latencyMs is the latency of the Lease RPCs (what a caller waits when its lease runs out), not
 * of the local decisions (a counter decrement, not timed one by one).
 */
import { readFileSync } from "node:fs";
import * as http2 from "node:http2";
import { create, fromBinary, toBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { GetLimitsRequestSchema, GetLimitsResponseSchema, LeaseRequestSchema, LeaseResponseSchema, type LeaseResponse } from "../src/gen/quota/v1/quota_pb.ts";
import { Decision } from "../src/gen/quota/v1/types_pb.ts";
import { createQuotaClient, type QuotaClient } from "../packages/client/src/index.ts";
import { grpcFrame } from "./lib/grpc-wire.ts";
import { summarize } from "./lib/stats.ts";

interface LeaseSpec {
  port: number;
  token?: string;
  keysFile: string;
  product: string;
  method: string;
  /** The quota limit the plan has (its counter is checked). */
  limitName: string;
  concurrency: number;
  calls: number;
  seconds: number;
  leaseCalls: number;
  ttlMs: number;
  /** Fraction of the current lease used before the next one is taken, 0..1 (default 0). Holder "raw" only. */
  prefetchAt?: number;
  /** "client" (@quota-authority/client with leases) or "raw" (the holder below; the default here). */
  holder?: "client" | "raw";
}

const spec = JSON.parse(readFileSync(process.argv[2]!, "utf8")) as LeaseSpec;
const calls = Math.min(spec.calls, 200_000_000);
const seconds = Math.min(spec.seconds, 300);
const keys = readFileSync(spec.keysFile, "utf8").split("\n").filter(Boolean).slice(0, 10_000);
const leaseCalls = BigInt(Math.max(1, Math.min(spec.leaseCalls, 100_000)));
const ttlSeconds = BigInt(Math.max(1, Math.min(Math.round(spec.ttlMs / 1000), 300)));

const session = http2.connect(`http://127.0.0.1:${spec.port}`, { settings: { initialWindowSize: 1 << 20 } });
session.on("error", () => {});
await new Promise<void>((resolve, reject) => {
  session.once("connect", () => resolve());
  session.once("error", reject);
});

let firstError: string | undefined;
let rpcErrors = 0;
/** One unary gRPC call through protobuf-es; throws on a non-OK status. */
function unary<I extends DescMessage, O extends DescMessage>(method: string, inSchema: I, outSchema: O, msg: MessageShape<I>): Promise<MessageShape<O>> {
  return new Promise((resolve, reject) => {
    const req = session.request({ ":method": "POST", ":path": `/quota.v1.QuotaService/${method}`, "content-type": "application/grpc", te: "trailers", ...(spec.token ? { authorization: `Bearer ${spec.token}` } : {}) });
    const chunks: Buffer[] = [];
    let status: string | undefined;
    let message = "";
    const onMeta = (h: http2.IncomingHttpHeaders) => {
      if (h["grpc-status"] !== undefined) {
        status = String(h["grpc-status"]);
        message = decodeURIComponent(String(h["grpc-message"] ?? ""));
      }
    };
    req.on("response", onMeta);
    req.on("trailers", onMeta);
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("error", (e) => (message ||= e.message));
    req.on("close", () => {
      if (status !== "0") {
        rpcErrors++;
        const e = `${method}: grpc-status ${status}: ${message}`;
        firstError ??= e;
        reject(new Error(e));
        return;
      }
      const frame = Buffer.concat(chunks);
      resolve(fromBinary(outSchema, frame.subarray(5, 5 + frame.readUInt32BE(1))));
    });
    req.end(grpcFrame(toBinary(inSchema, msg)));
  });
}

/** The key's quota counter: `used` of the limit named `limitName` (GetLimits reads the counter store). */
async function usedOf(apiKey: string): Promise<{ used: bigint; limit: bigint }> {
  // Retried (bounded): on a loaded machine the server's 50 ms store deadline can answer UNAVAILABLE.
  let r: MessageShape<typeof GetLimitsResponseSchema> | undefined;
  for (let tries = 0; !r; tries++) {
    try {
      r = await getLimits(apiKey);
    } catch (e) {
      if (tries >= 9) throw e;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }
  for (const s of r.subscriptions) for (const l of s.limits) if (l.name === spec.limitName) return { used: l.used, limit: l.limit };
  throw new Error(`GetLimits: no limit named ${spec.limitName}`);
}
function getLimits(apiKey: string) {
  return unary("GetLimits", GetLimitsRequestSchema, GetLimitsResponseSchema, create(GetLimitsRequestSchema, { apiKey, product: spec.product }));
}

interface Lease {
  id: string;
  granted: number;
  used: number;
  /** Wall-clock ms: no local decision at or after it (less a margin for the clocks of two processes). */
  usableUntil: number;
}
interface Holder {
  key: string;
  /** The lease decisions are admitted under. */
  cur?: Lease;
  /** The next lease, taken ahead (`prefetchAt`) so callers do not wait for a Lease RPC. */
  spare?: Lease;
  /** Leases no decision is admitted under any more, with their usage: closed by the next Lease call. */
  toClose: Array<{ leaseId: string; usedCalls: bigint }>;
  renewing?: Promise<boolean>;
  /** Decisions admitted under leases already closed. */
  closedUsed: bigint;
  cost: bigint;
}
const holders: Holder[] = keys.map((key) => ({ key, toClose: [], closedUsed: 0n, cost: 0n }));
const leaseLatencies = new Float64Array(Math.min(1_000_000, Math.ceil(calls / Number(leaseCalls)) * 2 + keys.length * 4 + 16));
let leaseRpcs = 0;
let leaseDenied = 0;
let grantedTotal = 0n;
const EXPIRY_MARGIN_MS = 200;
/** Take the spare lease once this fraction of the current one is used (0: as soon as it is in use). */
const prefetchAt = Math.max(0, Math.min(spec.prefetchAt ?? 0, 1));

/** One Lease call: closes the holder's finished leases and (take) takes the next one, kept as `spare`. */
async function renew(h: Holder, take: boolean): Promise<boolean> {
  const close = h.toClose.splice(0, 100);
  const t0 = performance.now();
  let r: LeaseResponse;
  try {
    r = await unary("Lease", LeaseRequestSchema, LeaseResponseSchema, create(LeaseRequestSchema, { apiKey: h.key, product: spec.product, method: spec.method, calls: take ? leaseCalls : 0n, ttl: { seconds: ttlSeconds }, close }));
  } catch (e) {
    h.toClose.unshift(...close); // not settled: closed by a later call
    throw e;
  } finally {
    if (leaseRpcs < leaseLatencies.length) leaseLatencies[leaseRpcs] = performance.now() - t0;
    leaseRpcs++;
  }
  for (const c of close) h.closedUsed += c.usedCalls;
  if (!take) return false;
  if (r.decision !== Decision.ALLOWED || r.grantedCalls <= 0n) {
    leaseDenied++;
    return false;
  }
  h.cost = r.costPerCall;
  grantedTotal += r.grantedCalls;
  const expires = r.expiresAt ? Number(r.expiresAt.seconds) * 1000 + Math.floor(r.expiresAt.nanos / 1e6) : Date.now() + Number(ttlSeconds) * 1000;
  const lease: Lease = { id: r.leaseId, granted: Number(r.grantedCalls), used: 0, usableUntil: expires - EXPIRY_MARGIN_MS };
  if (h.cur) h.spare = lease;
  else h.cur = lease;
  return true;
}
function startRenew(h: Holder): Promise<boolean> {
  return (h.renewing ??= renew(h, true).finally(() => (h.renewing = undefined)));
}

let allowed = 0;
let denied = 0;
let errors = 0;
/** One decision for holder h: local while a lease lasts; the next lease is taken ahead (`prefetchAt`). */
async function decide(h: Holder): Promise<boolean> {
  for (let attempt = 0; attempt < 4; attempt++) {
    const c = h.cur;
    if (c && c.used < c.granted && Date.now() < c.usableUntil) {
      c.used++;
      if (!h.spare && !h.renewing && c.used >= c.granted * prefetchAt) void startRenew(h).catch(() => {});
      return true;
    }
    if (c) {
      // Used up or ended: nothing more is admitted under it; the next Lease call closes it.
      h.toClose.push({ leaseId: c.id, usedCalls: BigInt(c.used) });
      h.cur = undefined;
    }
    if (h.spare) {
      h.cur = h.spare;
      h.spare = undefined;
      continue;
    }
    if (!(await startRenew(h))) return false;
  }
  return false;
}

// Holder "client": the published client decides; its Lease RPCs are counted and timed by an interceptor.
let clientUnits = 0n;
let clientRemote = 0;
let clientCost = 0n;
const client: QuotaClient | undefined =
  spec.holder === "client"
  ? createQuotaClient({
      address: `127.0.0.1:${spec.port}`,
      ...(spec.token ? { token: spec.token } : {}),
      deadlineMs: 5_000,
      leases: { calls: Number(leaseCalls), ttlMs: Number(ttlSeconds) * 1000 },
      interceptors: [
        (next) => async (req) => {
          if (req.method.name !== "Lease") return next(req);
          const t0 = performance.now();
          try {
            return await next(req);
          } catch (e) {
            rpcErrors++;
            firstError ??= `Lease: ${(e as Error).message}`;
            throw e;
          } finally {
            if (leaseRpcs < leaseLatencies.length) leaseLatencies[leaseRpcs] = performance.now() - t0;
            leaseRpcs++;
          }
        },
      ],
    })
  : undefined;
let clientUnavailable = 0;
let clientReleaseErrors = 0;
/** One decision through the client: local on its lease, or (no lease to be had) a remote call, then released.
 * A denial for UNAVAILABLE (the client's failure policy: the service did not answer) is not a decision: undefined. */
async function decideByClient(key: string): Promise<boolean | undefined> {
  const a = await client!.checkAndReserve({ apiKey: key, product: spec.product, method: spec.method });
  if (!a.allowed) {
    if (a.reason !== "UNAVAILABLE") return false;
    clientUnavailable++;
    return undefined;
  }
  clientUnits += a.cost;
  clientCost ||= a.cost;
  if (!a.lease) {
    clientRemote++;
    // Admitted and counted whatever happens to its Release (an unreleased reservation is charged at its TTL).
    if (a.reservationId) await client!.release({ reservationId: a.reservationId }).catch(() => clientReleaseErrors++);
  }
  return true;
}

const before: Array<{ used: bigint; limit: bigint }> = [];
for (const h of holders) before.push(await usedOf(h.key));
if (process.argv[3] === "--handshake") {
  console.log("ready");
  await new Promise<void>((resolve) => process.stdin.once("data", () => resolve()));
}
const cpu0 = process.cpuUsage();
const started = performance.now();
const deadline = started + seconds * 1000;
let next = 0;
await Promise.all(
  Array.from({ length: Math.max(1, Math.min(spec.concurrency, 4096)) }, async () => {
    // The clock is read once per 256 decisions: a bounded loop that does not pay performance.now() per decision.
    while (next < calls && ((next & 255) !== 0 || performance.now() < deadline)) {
      const i = next++;
      try {
        const h = holders[i % holders.length]!;
        const ok = await (client ? decideByClient(h.key) : decide(h));
        if (ok) allowed++;
        else if (ok === false) denied++;
      } catch {
        errors++;
        if (errors > 1000) return;
      }
    }
  }),
);
const elapsed = (performance.now() - started) / 1000;
const cpu = process.cpuUsage(cpu0);

// Close every open lease (calls = 0: settle only), then read the counters back.
if (client) await client.close();
else await Promise.all(
  holders.map(async (h) => {
    await h.renewing?.catch(() => false);
    for (const l of [h.cur, h.spare]) if (l) h.toClose.push({ leaseId: l.id, usedCalls: BigInt(l.used) });
    h.cur = h.spare = undefined;
    for (let tries = 0; h.toClose.length && tries < 10; tries++) await renew(h, false).catch(() => new Promise((resolve) => setTimeout(resolve, 200)));
  }),
);
const after: Array<{ used: bigint; limit: bigint }> = [];
for (const h of holders) after.push(await usedOf(h.key));
session.close();

let counted = 0n;
let admittedUnits = 0n;
let overLimit = 0;
for (const [i, h] of holders.entries()) {
  counted += after[i]!.used - before[i]!.used;
  if (!client) admittedUnits += h.closedUsed * h.cost;
  if (after[i]!.used > after[i]!.limit) overLimit++;
}
if (client) admittedUnits = clientUnits;
const cost = client ? clientCost : (holders[0]?.cost ?? 0n);
const unclosed = holders.reduce((n, h) => n + h.toClose.length, 0);
const done = allowed + denied;
console.log(
  JSON.stringify({
    ops: done,
    rpcs: leaseRpcs,
    errors: errors + rpcErrors,
    ...(firstError ? { firstError } : {}),
    allowed,
    denied,
    shed: 0,
    seconds: Math.round(elapsed * 1000) / 1000,
    opsPerSecond: Math.round(done / elapsed),
    rpcsPerSecond: Math.round(leaseRpcs / elapsed),
    latencyMs: summarize(leaseLatencies, Math.min(leaseRpcs, leaseLatencies.length)),
    cpuSeconds: (cpu.user + cpu.system) / 1e6,
    lease: {
      keys: holders.length,
      leaseCallsAsked: Number(leaseCalls),
      leaseRpcs,
      leaseDenied,
      grantedCalls: Number(grantedTotal),
      admittedDecisions: allowed,
      admittedUnits: admittedUnits.toString(),
      counterMovedUnits: counted.toString(),
      unclosedLeases: unclosed,
      holder: client ? "client" : "raw",
      // The client's Lease calls are counted by the interceptor (leaseRpcs); its grants, denials and unsettled leases
      // are its own (a settlement that failed shows as exact: false).
      ...(client ? { remoteDecisions: clientRemote, unavailableAnswers: clientUnavailable, releaseErrors: clientReleaseErrors, leaseDenied: null, grantedCalls: null, unclosedLeases: null } : {}),
      exact: unclosed === 0 && counted === admittedUnits && admittedUnits === BigInt(allowed) * cost,
      keysOverLimit: overLimit,
    },
  }),
);
process.exit(0);
