/**
 * Graceful shutdown of the real server process (`node src/cli/main.ts serve`, real Postgres and Redis) under a
 * steady stream of CheckAndReserve calls — gRPC (grpc-js over HTTP/2) and Connect (HTTP/1.1 keep-alive) — the way
 * docs/operations.md promises it: "SIGTERM: health NOT_SERVING first, in-flight calls answered, usage flushed,
 * connections closed, exit 0, within QUOTA_SHUTDOWN_GRACE_MS".
 *
 * There is no slow RPC, so "in flight" is measured: the client loops never pause, and every call records when it
 * was sent and when it settled. One client is slow on purpose: it sends each Connect JSON request over a raw HTTP/1.1
 * keep-alive connection in two parts, the body 100 ms after the headers (a slow link or a large upload), so its
 * connection is busy at the server almost all the time — at the moment of the signal and when the drain starts. What
 * is asserted:
 * - health: probed right after the signal (gRPC health over a new channel, over a channel opened before the signal,
 *   and GET /readyz), NOT_SERVING (or 503) is observed before the process exits, never SERVING again after it, and
 *   no probe hangs;
 * - calls: every call settles within the test's bound; every answer is ALLOWED; every failure is a refusal (gRPC
 *   UNAVAILABLE, or the HTTP/1.1 connection closed or reset before an answer) and — proven after a restart by retrying
 *   its idempotency id (replayed=false) — never executed: the server answered every call it accepted. Calls in
 *   flight at the signal, the slow one included, were answered;
 * - usage flushed: the periodic flush is disabled (10 min), so the Postgres usage snapshot can only come from the
 *   shutdown; it equals the number of ALLOWED answers, and so does the counter the restarted server reads;
 * - exit 0 long before the grace deadline (set far above the test's timeout: the drain finished by itself, nothing
 *   was forced), the logs say
 *   "shutting down" then "stopped" with no error-level line, and the server's Postgres connections are closed.
 */
import * as net from "node:net";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { status } from "@grpc/grpc-js";
import { Decision } from "../../src/gen/quota/v1/types_pb.ts";
import { ADMIN, clients, codeOf, type Clients, type QuotaClient } from "../support/clients.ts";
import { seedAccount, type Seeded } from "../support/fixtures.ts";
import { ServerProcess, healthCheck, healthClient } from "../support/server-process.ts";
import { sleep, within } from "../support/time.ts";

const PRODUCT = "sigterm-api";
const PLANS = `
plans:
  - id: sigterm
    name: sigterm
    products: [${PRODUCT}]
    limits:
      - { name: monthly, kind: quota, scope: subscription, limit: 10000000, period: monthly }
`;
/** Far above the test's own timeout (50 s): an exit within the test proves the drain finished by itself — the grace
 * would only force it much later — without asserting a duration. */
const GRACE_MS = 60_000;
const GRPC_LOOPS = 6;
const CONNECT_LOOPS = 4;
const CALLS_PER_LOOP = 5000;
const LOAD_BEFORE_SIGNAL_MS = 800;
/** The slow client sends each request body this long after its headers. */
const SLOW_UPLOAD_MS = 100;
/** Backstop: no loop sends after this long past the signal, whatever the server does. */
const LOOP_MAX_AFTER_SIGNAL_MS = 20_000;

interface Call {
  idem: string;
  protocol: "grpc-js" | "connect" | "http/1.1 slow upload";
  sentAt: number;
  settledAt?: number;
  /** "ALLOWED", "DENIED", or the error's gRPC/Connect code name. */
  outcome?: string;
  error?: string;
}

interface Probe {
  kind: "grpc (new channel)" | "grpc (open channel)" | "GET /readyz";
  /** ms after the signal when the probe was sent, and when its result came. */
  t: number;
  done: number;
  result: string;
}



const codeName = (e: unknown) => {
  const code = codeOf(e);
  return code === undefined ? `no code: ${String((e as Error)?.message ?? e)}` : (status[code] ?? String(code));
};

/**
 * One raw HTTP/1.1 keep-alive connection, to control exactly when the bytes of a request are sent. `response()`
 * resolves with the next complete response (Content-Length framed) or "closed" if the server closes the connection.
 */
async function rawConnection(port: number) {
  const sock = net.connect(port, "127.0.0.1");
  await new Promise<void>((resolve, reject) => sock.once("connect", resolve).once("error", reject));
  let buf = Buffer.alloc(0);
  let closed = false;
  let wake: (() => void) | undefined;
  sock.on("data", (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    wake?.();
  });
  const onEnd = () => {
    closed = true;
    wake?.();
  };
  sock.on("end", onEnd).on("close", onEnd).on("error", onEnd);
  const parse = () => {
    const end = buf.indexOf("\r\n\r\n");
    if (end < 0) return undefined;
    const lines = buf.subarray(0, end).toString("latin1").split("\r\n");
    const headers = Object.fromEntries(lines.slice(1).map((l) => [l.slice(0, l.indexOf(":")).trim().toLowerCase(), l.slice(l.indexOf(":") + 1).trim()]));
    const length = Number(headers["content-length"] ?? 0);
    if (buf.length < end + 4 + length) return undefined;
    const body = buf.subarray(end + 4, end + 4 + length).toString("utf8");
    buf = buf.subarray(end + 4 + length);
    return { status: Number(lines[0]!.split(" ")[1]), headers, body };
  };
  return {
    write: (text: string) => sock.write(text),
    response: async (timeoutMs: number): Promise<{ status: number; headers: Record<string, string>; body: string } | "closed" | "timeout"> => {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const r = parse();
        if (r) return r;
        if (closed) return "closed";
        if (Date.now() > deadline) return "timeout";
        await new Promise<void>((resolve) => {
          wake = resolve;
          setTimeout(resolve, 20);
        });
      }
    },
    destroy: () => sock.destroy(),
  };
}

const checkRequest = (body: string) =>
  `POST /quota.v1.QuotaService/CheckAndReserve HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n`;

/** The first call on a new channel after a restart: UNAVAILABLE while it connects is retried for up to 5 s. */
async function firstCall<T>(call: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + 5000;
  for (;;) {
    try {
      return await call();
    } catch (e) {
      if (codeOf(e) !== status.UNAVAILABLE || Date.now() > deadline) throw e;
      await sleep(100);
    }
  }
}

/** Units used in a quota state hash as the usage snapshot stores it: base field `b` + every grant field `g:<id>`. */
function usedOf(state: Record<string, string> | undefined): bigint | undefined {
  if (!state) return undefined;
  let used = 0n;
  for (const [f, v] of Object.entries(state)) if (f === "b" || f.startsWith("g:")) used += BigInt(v);
  return used;
}

describe("SIGTERM under load: NOT_SERVING first, in-flight calls answered, usage flushed, exit 0", () => {
  let server: ServerProcess;
  let db: pg.Client;
  let c: Clients;
  let seed: Seeded;

  beforeAll(async () => {
    server = await ServerProcess.create({
      env: {
        QUOTA_SHUTDOWN_GRACE_MS: String(GRACE_MS),
        // The periodic flush and reconcile never run during the test: the usage snapshot can only come from shutdown.
        QUOTA_FLUSH_INTERVAL_MS: "600000",
        QUOTA_RECONCILE_INTERVAL_MS: "600000",
        // A loaded test machine must not turn into fail-closed denials (a deadline, not the shutdown, would answer).
        QUOTA_STORE_DEADLINE_MS: "5000",
      },
    });
    await server.start();
    db = new pg.Client({ connectionString: server.databaseUrl });
    await db.connect();
    c = clients("grpc-js", server.ports);
    await c.admin.applyPlans({ document: PLANS }, ADMIN);
    seed = await seedAccount(c, "sigterm");
    c.close();
  }, 60_000);

  afterAll(async () => {
    c?.close();
    await db?.end().catch(() => {});
    await server?.cleanup();
  });

  it("answers what it accepted, reports NOT_SERVING, flushes usage and exits 0 before the grace deadline", { timeout: 50_000 }, async () => {
    const { accountId, apiKey, subscriptionId } = seed;
    const snapshot = async () =>
      usedOf((await db.query<{ state: Record<string, string> }>(`select state from usage_snapshots where account_id = $1 and limit_id = $2`, [accountId, `s:${subscriptionId}:monthly`])).rows[0]?.state);
    expect(await snapshot(), "no usage snapshot before the shutdown (the periodic flush is off)").toBeUndefined();
    const address = `127.0.0.1:${server.grpcPort}`;
    expect(await healthCheck(address)).toBe("SERVING");
    const openChannel = healthClient(address);
    expect(await openChannel.check("quota.v1.QuotaService")).toBe("SERVING");

    // ------------------------------------------------------------------ a steady stream of calls
    const calls: Call[] = [];
    let signalAt = 0;
    let exitedAt = 0;
    const loadStart = Date.now();
    const loop = async (name: string, protocol: Call["protocol"], q: QuotaClient) => {
      for (let i = 0; i < CALLS_PER_LOOP; i++) {
        if (exitedAt || (signalAt && Date.now() - signalAt > LOOP_MAX_AFTER_SIGNAL_MS) || Date.now() - loadStart > 30_000) return;
        const call: Call = { idem: `${name}-${i}`, protocol, sentAt: Date.now() };
        calls.push(call);
        try {
          const a = await q.checkAndReserve({ apiKey, product: PRODUCT, method: "get", idempotencyId: call.idem });
          call.outcome = a.decision === Decision.ALLOWED ? "ALLOWED" : "DENIED";
        } catch (e) {
          call.outcome = codeName(e);
          call.error = String((e as Error)?.message ?? e).slice(0, 200);
        }
        call.settledAt = Date.now();
        // A client that got an error stops sending (it would retry elsewhere).
        if (call.error) return;
      }
    };
    const slow = await rawConnection(server.httpPort);
    const slowLoop = async () => {
      for (let i = 0; i < CALLS_PER_LOOP; i++) {
        if (exitedAt || (signalAt && Date.now() - signalAt > LOOP_MAX_AFTER_SIGNAL_MS) || Date.now() - loadStart > 30_000) return;
        const call: Call = { idem: `slow-${i}`, protocol: "http/1.1 slow upload", sentAt: Date.now() };
        calls.push(call);
        const body = JSON.stringify({ apiKey, product: PRODUCT, method: "get", idempotencyId: call.idem });
        slow.write(checkRequest(body) + body.slice(0, 8));
        await sleep(SLOW_UPLOAD_MS);
        slow.write(body.slice(8));
        const r = await slow.response(3000);
        call.settledAt = Date.now();
        if (typeof r === "string") {
          call.outcome = r;
          call.error = `connection ${r} before an answer`;
          return;
        }
        const decision = r.status === 200 ? (JSON.parse(r.body) as { decision?: string }).decision : undefined;
        call.outcome = decision ?? `HTTP ${r.status}`;
        if (!decision) {
          call.error = r.body.slice(0, 200);
          return;
        }
      }
    };
    const grpcClients = [clients("grpc-js", server.ports), clients("grpc-js", server.ports)];
    const connectClients = Array.from({ length: CONNECT_LOOPS }, () => clients("connect", server.ports));
    const closeClients = () => {
      for (const g of [...grpcClients, ...connectClients]) g.close();
      openChannel.close();
      slow.destroy();
    };
    const probes: Probe[] = [];
    try {
      const load = Promise.all([
        ...Array.from({ length: GRPC_LOOPS }, (_, i) => loop(`g${i}`, "grpc-js", grpcClients[i % 2]!.quota)),
        ...Array.from({ length: CONNECT_LOOPS }, (_, i) => loop(`c${i}`, "connect", connectClients[i]!.quota)),
        slowLoop(),
      ]);
      await sleep(LOAD_BEFORE_SIGNAL_MS);
      for (let i = 0; i < 100 && calls.filter((x) => x.outcome === "ALLOWED").length < 200; i++) await sleep(50);

      // ------------------------------------------------------------------ SIGTERM, and probe health until the exit
      signalAt = Date.now();
      const exit = server.stop(30_000).then((e) => {
        exitedAt = Date.now();
        return e;
      });
      const prober = async (kind: Probe["kind"], probe: () => Promise<string>) => {
        for (let i = 0; i < 5000 && !exitedAt && Date.now() - signalAt < 25_000; i++) {
          const t = Date.now() - signalAt;
          const result = await probe();
          probes.push({ kind, t, done: Date.now() - signalAt, result });
          await sleep(5);
        }
      };
      const grpcResult = (p: Promise<string>) => p.catch((e: unknown) => `error ${codeName(e)}`);
      const probing = Promise.all([
        prober("grpc (new channel)", () => grpcResult(healthCheck(address, "", 1000))),
        // The open channel asks for the service by name: every registered service must go NOT_SERVING, not only "".
        prober("grpc (open channel)", () => grpcResult(openChannel.check("quota.v1.QuotaService", 1000))),
        prober("GET /readyz", async () => {
          try {
            const res = await fetch(`http://127.0.0.1:${server.httpPort}/readyz`, { headers: { connection: "close" }, signal: AbortSignal.timeout(1000) });
            await res.text();
            return `HTTP ${res.status}`;
          } catch (e) {
            const cause = (e as { cause?: { code?: string } }).cause?.code;
            return `error ${cause ?? (e as Error).name}`;
          }
        }),
      ]);
      const exited = await exit;
      const took = exitedAt - signalAt;
      await within(probing, 10_000, "health probes");
      await within(load, 15_000, "the client loops");

      // ------------------------------------------------------------------ process: exit 0, logs, before the deadline
      expect(exited, server.output()).toEqual({ code: 0, signal: null });
      const messages = server.logs().map((l) => String(l.msg));
      const at = (prefix: string) => messages.findIndex((m) => m.startsWith(prefix));
      expect(at("signal received"), messages.join("\n")).toBeGreaterThanOrEqual(0);
      expect(at("shutting down"), messages.join("\n")).toBeGreaterThan(at("signal received"));
      expect(at("stopped"), messages.join("\n")).toBeGreaterThan(at("shutting down"));
      const errorLines = server.logs().filter((l) => typeof l.level === "number" && l.level >= 50);
      expect.soft(errorLines, "error-level log lines").toEqual([]);
      // Exited at all within stop()'s 30 s, with a 60 s grace: the drain finished by itself, nothing was forced.

      // ------------------------------------------------------------------ health: NOT_SERVING observed before the exit
      const summary = summarize(probes);
      expect(probes.filter((p) => /DEADLINE_EXCEEDED|TimeoutError/.test(p.result)), `hung health probes; ${summary}`).toEqual([]);
      const notServing = probes.filter((p) => p.result === "NOT_SERVING" || p.result === "HTTP 503");
      expect.soft(notServing.length, `NOT_SERVING or /readyz 503 observed between SIGTERM and exit; probes: ${summary}`).toBeGreaterThan(0);
      // Once a probe has seen NOT_SERVING (or a refusal), no probe sent after that answers SERVING (any service).
      const firstDown = Math.min(...probes.filter((p) => !["SERVING", "HTTP 200"].includes(p.result)).map((p) => p.done));
      expect(probes.filter((p) => p.t > firstDown && ["SERVING", "HTTP 200"].includes(p.result)), summary).toEqual([]);
      // The port stops accepting: after the exit nothing answers, and /readyz is not 200.
      expect(await server.ready()).toBe(false);

      // ------------------------------------------------------------------ calls: every one settled; answers or UNAVAILABLE
      expect(calls.filter((x) => x.settledAt === undefined), "calls left hanging").toEqual([]);
      const before = calls.filter((x) => x.sentAt < signalAt);
      const inFlightAtSignal = before.filter((x) => x.settledAt! >= signalAt);
      const failed = calls.filter((x) => x.error);
      const allowed = calls.filter((x) => x.outcome === "ALLOWED").length;
      const stats = {
        calls: calls.length,
        allowed,
        sentBeforeSignal: before.length,
        inFlightAtSignal: inFlightAtSignal.length,
        inFlightAnswered: inFlightAtSignal.filter((x) => x.outcome === "ALLOWED").length,
        answeredAfterSignal: calls.filter((x) => x.sentAt >= signalAt && x.outcome === "ALLOWED").length,
        failed: failed.map((x) => `${x.protocol} ${x.outcome} sent ${x.sentAt - signalAt} ms, settled ${x.settledAt! - signalAt} ms after SIGTERM: ${x.error}`),
        tookMs: took,
      };
      expect(before.length, JSON.stringify(stats)).toBeGreaterThanOrEqual(200);
      expect(calls.filter((x) => x.outcome === "DENIED"), "no denials (the quota is far from spent)").toEqual([]);
      // Calls were in flight when the signal came, and they were answered (drained), not cut.
      expect(stats.inFlightAtSignal, JSON.stringify(stats, null, 1)).toBeGreaterThan(0);
      expect(stats.inFlightAnswered, JSON.stringify(stats, null, 1)).toBeGreaterThan(0);
      // The slow client had a request in flight at the signal (its headers were at the server): it was answered.
      const slowInFlight = inFlightAtSignal.filter((x) => x.protocol === "http/1.1 slow upload");
      expect(slowInFlight.map((x) => x.outcome), JSON.stringify(stats, null, 1)).toEqual(["ALLOWED"]);
      expect(calls.filter((x) => x.outcome === "timeout"), "HTTP/1.1 requests left unanswered on an open connection").toEqual([]);

      // A failure is only ever a refusal, safe to retry (checked below: it never executed): UNAVAILABLE, or — for
      // HTTP/1.1, where closing an idle keep-alive connection races with the client's next request on it — the
      // connection-level error the client library reports for that (connect-node: INTERNAL "write EPIPE").
      const refusal = (x: Call) => x.outcome === "UNAVAILABLE" || x.outcome === "closed" || /\b(EPIPE|ECONNRESET|ECONNREFUSED|socket hang up)\b/.test(x.error ?? "");
      expect.soft(failed.filter((x) => !refusal(x)), JSON.stringify(stats, null, 1)).toEqual([]);

      // ------------------------------------------------------------------ usage flushed at shutdown, and exact
      const answered = BigInt(allowed);
      expect.soft(await snapshot(), `usage snapshot written by the shutdown flush = ALLOWED answers (${JSON.stringify(stats)})`).toBe(answered);

      // ------------------------------------------------------------------ connections closed
      const backends = async () =>
        Number((await db.query<{ n: string }>(`select count(*) as n from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()`)).rows[0]!.n);
      let left = await backends();
      for (let i = 0; i < 40 && left > 0; i++) {
        await sleep(50);
        left = await backends();
      }
      expect(left, "Postgres connections of the stopped server").toBe(0);

      // ------------------------------------------------------------------ restart: the counter agrees; failed calls never ran
      // The old channels are closed first: grpc-js shares subchannels between clients of one address, and theirs is
      // in reconnect backoff after the exit.
      closeClients();
      await server.start();
      const c2 = clients("grpc-js", server.ports);
      try {
        const gl = await firstCall(() => c2.quota.getLimits({ apiKey }));
        expect.soft(gl.subscriptions[0]!.limits.find((l) => l.name === "monthly")!.used, "live counter after restart = ALLOWED answers").toBe(answered);
        const executedButFailed: string[] = [];
        for (const x of failed) {
          const again = await c2.quota.checkAndReserve({ apiKey, product: PRODUCT, method: "get", idempotencyId: x.idem });
          expect(again.decision).toBe(Decision.ALLOWED);
          if (again.replayed) executedButFailed.push(`${x.idem} (${x.protocol}): sent ${x.sentAt - signalAt} ms, failed ${x.settledAt! - signalAt} ms after SIGTERM with ${x.outcome}: ${x.error}`);
        }
        expect.soft(executedButFailed, "calls the server executed (charged) but answered with an error").toEqual([]);
      } finally {
        c2.close();
      }
      // Idle: a second SIGTERM exits 0 by itself (stop() waits at most 20 s, far below the 60 s grace).
      expect(await server.stop()).toEqual({ code: 0, signal: null });
    } finally {
      closeClients();
    }
  });
});

/** Probe results per kind as runs: "grpc (new channel): 0-14 ms error UNAVAILABLE x3; ...". */
function summarize(probes: Probe[]): string {
  const out: string[] = [];
  for (const kind of ["grpc (new channel)", "grpc (open channel)", "GET /readyz"] as const) {
    const runs: string[] = [];
    let cur: { result: string; from: number; to: number; n: number } | undefined;
    for (const p of probes.filter((x) => x.kind === kind)) {
      if (cur && cur.result === p.result) {
        cur.to = p.t;
        cur.n++;
      } else {
        if (cur) runs.push(`${cur.from}-${cur.to} ms ${cur.result} x${cur.n}`);
        cur = { result: p.result, from: p.t, to: p.t, n: 1 };
      }
    }
    if (cur) runs.push(`${cur.from}-${cur.to} ms ${cur.result} x${cur.n}`);
    out.push(`${kind}: ${runs.join(", ") || "none"}`);
  }
  return out.join("; ");
}
