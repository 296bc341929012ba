/**
 * The load generator: a separate process sending pre-encoded gRPC frames over raw node:http2 sessions (no grpc-js,
 * no protobuf runtime per call), so what it costs itself stays small and is measured apart (its CPU is reported).
 *
 *   node bench/load.ts SPEC.json      prints one JSON result line
 *
 * SPEC: { port, keysFile, mix, loop, concurrency, rate, calls, seconds, connections, token, product, method, batch }
 *   mix   "reserve"  CheckAndReserve only
 *         "pair"     CheckAndReserve then Release(COMMIT) of the reservation (one operation = two RPCs)
 *         "limits"   GetLimits
 *         "batch"    CheckAndReserveBatch of `batch` items (keys round-robin inside the message); one operation is
 *                    one RPC, and `decisions` counts the items answered (ops/s is then decisions/s)
 *   loop  "closed"   `concurrency` operations in flight, each starts when the previous ends
 *         "open"     operations start at a fixed `rate` per second whatever the answers do; latency is measured
 *                    from the scheduled start (no coordinated omission); at most `maxInFlight` outstanding, the
 *                    rest are counted as `shed`
 * Keys are used round-robin (one line per key in keysFile). Every loop stops at `calls` operations or `seconds`.
 */
import { readFileSync } from "node:fs";
import * as http2 from "node:http2";
import { checkAndReserveBatchFrame, checkAndReserveFrame, getLimitsFrame, releaseFrame, scanBatchAnswer, scanReserveAnswer } from "./lib/grpc-wire.ts";
import { summarize } from "./lib/stats.ts";

export interface LoadSpec {
  port: number;
  keysFile: string;
  mix: "reserve" | "pair" | "limits" | "batch";
  loop: "closed" | "open";
  concurrency: number;
  rate: number;
  calls: number;
  seconds: number;
  connections: number;
  token?: string;
  product: string;
  method: string;
  maxInFlight?: number;
  /** Items per CheckAndReserveBatch message (mix "batch"), 1..1,000. */
  batch?: number;
  /** Path served for "reserve" (the floor server answers the same path). */
  service?: string;
}

export interface LoadResult {
  ops: number;
  rpcs: number;
  errors: number;
  firstError?: string;
  allowed: number;
  denied: number;
  shed: number;
  seconds: number;
  opsPerSecond: number;
  rpcsPerSecond: number;
  latencyMs: ReturnType<typeof summarize>;
  /** Mix "batch": items decided (allowed + denied, less the UNAVAILABLE denials) and items answered with an error;
   * ops = decisions. */
  decisions?: number;
  itemErrors?: number;
  /** Denials whose reason is UNAVAILABLE (store deadline passed: fail closed); not counted in ops. */
  deniedUnavailable?: number;
  /** This process's own CPU during the load window. */
  cpuSeconds: number;
}

const spec = JSON.parse(readFileSync(process.argv[2]!, "utf8")) as LoadSpec;
const calls = Math.min(spec.calls, 5_000_000);
const seconds = Math.min(spec.seconds, 300);
const service = spec.service ?? "/quota.v1.QuotaService";
const keys = readFileSync(spec.keysFile, "utf8").split("\n").filter(Boolean);
const batch = Math.max(1, Math.min(spec.batch ?? 100, 1000));
// Batch i carries keys i*batch .. i*batch+batch-1 (mod the key count): every key is used, round-robin.
const frames = keys.map((k, i) =>
  spec.mix === "limits" ? getLimitsFrame(k) : spec.mix === "batch" ? checkAndReserveBatchFrame(Array.from({ length: batch }, (_, t) => keys[(i * batch + t) % keys.length]!), spec.product, spec.method) : checkAndReserveFrame(k, spec.product, spec.method),
);
const firstPath = `${service}/${spec.mix === "limits" ? "GetLimits" : spec.mix === "batch" ? "CheckAndReserveBatch" : "CheckAndReserve"}`;
const headersFor = (path: string): http2.OutgoingHttpHeaders => ({
  ":method": "POST",
  ":path": path,
  "content-type": "application/grpc",
  te: "trailers",
  ...(spec.token ? { authorization: `Bearer ${spec.token}` } : {}),
});
const firstHeaders = headersFor(firstPath);
const releaseHeaders = headersFor(`${service}/Release`);

const sessions: http2.ClientHttp2Session[] = [];
for (let i = 0; i < Math.max(1, Math.min(spec.connections, 64)); i++) {
  const s = http2.connect(`http://127.0.0.1:${spec.port}`, { settings: { initialWindowSize: 1 << 20 } });
  s.on("error", () => {});
  await new Promise<void>((resolve, reject) => {
    s.once("connect", () => resolve());
    s.once("error", reject);
  });
  sessions.push(s);
}

let errors = 0;
let firstError: string | undefined;
let allowed = 0;
let denied = 0;
let rpcs = 0;
let itemErrors = 0;
let deniedUnavailable = 0;
/** Operations whose first RPC ended with a non-OK status: answered, but not a decision (counted in `errors`). */
let failedOps = 0;

/** One unary gRPC call; resolves with the answer frame, or undefined on a non-OK status. */
function call(session: http2.ClientHttp2Session, headers: http2.OutgoingHttpHeaders, frame: Buffer): Promise<Buffer | undefined> {
  return new Promise((resolve) => {
    const req = session.request(headers, { endStream: false });
    const chunks: Buffer[] = [];
    let status: string | undefined;
    req.on("response", (h) => {
      // Trailers-only answer (an error before any message): the status is in the headers.
      if (h["grpc-status"] !== undefined) {
        status = String(h["grpc-status"]);
        if (status !== "0" && !firstError) firstError = `grpc-status ${status}: ${decodeURIComponent(String(h["grpc-message"] ?? ""))}`;
      }
    });
    req.on("trailers", (t) => {
      status = String(t["grpc-status"]);
      if (status !== "0" && !firstError) firstError = `grpc-status ${status}: ${decodeURIComponent(String(t["grpc-message"] ?? ""))}`;
    });
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("error", (e) => {
      firstError ??= e.message;
    });
    req.on("close", () => {
      rpcs++;
      if (status !== "0") {
        errors++;
        firstError ??= `grpc-status ${status}`;
        resolve(undefined);
      } else resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks));
    });
    req.end(frame);
  });
}

let next = 0;
async function operation(i: number): Promise<void> {
  const session = sessions[i % sessions.length]!;
  const answer = await call(session, firstHeaders, frames[i % frames.length]!);
  if (!answer) {
    failedOps++;
    return;
  }
  if (spec.mix === "limits") return;
  if (spec.mix === "batch") {
    const b = scanBatchAnswer(answer);
    allowed += b.allowed;
    denied += b.denied;
    itemErrors += b.itemErrors;
    deniedUnavailable += b.deniedUnavailable;
    return;
  }
  const a = scanReserveAnswer(answer);
  if (a.decision === 1) allowed++;
  else {
    denied++;
    if (a.reason === 12) deniedUnavailable++;
  }
  if (spec.mix === "pair" && a.reservationId) await call(session, releaseHeaders, releaseFrame(a.reservationId));
}

const latencies = new Float64Array(calls);
let done = 0;
let shed = 0;
// Handshake with the orchestrator: "ready" once connected, then wait for "go" on stdin, so the CPU it samples from
// /proc around the run covers the load window and not this process's startup.
if (process.argv[3] === "--handshake") {
  console.log("ready");
  await new Promise<void>((resolve) => process.stdin.once("data", () => resolve()));
}
const cpu0 = process.cpuUsage();
const started = performance.now();
const deadline = started + seconds * 1000;

if (spec.loop === "closed") {
  await Promise.all(
    Array.from({ length: Math.max(1, Math.min(spec.concurrency, 4096)) }, async () => {
      while (next < calls && performance.now() < deadline) {
        const i = next++;
        const t0 = performance.now();
        await operation(i);
        latencies[done++] = performance.now() - t0;
      }
    }),
  );
} else {
  const rate = Math.max(1, spec.rate);
  const maxInFlight = spec.maxInFlight ?? 4096;
  let inFlight = 0;
  let scheduled = 0;
  await new Promise<void>((resolve) => {
    const tick = () => {
      const now = performance.now();
      const due = Math.min(calls, Math.floor(((now - started) / 1000) * rate));
      while (scheduled < due) {
        const intended = started + (scheduled / rate) * 1000;
        const i = scheduled++;
        if (inFlight >= maxInFlight) {
          shed++;
          continue;
        }
        inFlight++;
        void operation(i).then(() => {
          inFlight--;
          if (done < calls) latencies[done++] = performance.now() - intended;
        });
      }
      if (scheduled >= calls || now >= deadline) {
        const wait = () => (inFlight === 0 || performance.now() > deadline + 5000 ? resolve() : setTimeout(wait, 2));
        wait();
        return;
      }
      setTimeout(tick, 1); // not setImmediate: a spinning generator would take a core from the server
    };
    tick();
  });
}
const elapsed = (performance.now() - started) / 1000;
const cpu = process.cpuUsage(cpu0);
for (const s of sessions) s.close();

// A denial for UNAVAILABLE (the server's store deadline passed: it failed closed) is an answer, not a decision of
// the quota: it is not counted in ops (nor in ops/s), and reported apart; nor is an operation whose RPC failed.
const decisions = allowed + denied - deniedUnavailable;
const ops = spec.mix === "batch" ? decisions : done - deniedUnavailable - failedOps;
const result: LoadResult = {
  ops,
  rpcs,
  errors: errors + itemErrors,
  ...(firstError ? { firstError } : {}),
  allowed,
  denied,
  shed,
  seconds: Math.round(elapsed * 1000) / 1000,
  opsPerSecond: Math.round(ops / elapsed),
  rpcsPerSecond: Math.round(rpcs / elapsed),
  latencyMs: summarize(latencies, done),
  deniedUnavailable,
  ...(spec.mix === "batch" ? { decisions, itemErrors } : {}),
  cpuSeconds: (cpu.user + cpu.system) / 1e6,
};
console.log(JSON.stringify(result));
process.exit(0);
