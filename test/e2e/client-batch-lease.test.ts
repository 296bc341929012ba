/**
 * @quota-authority/client's `batching` and `leases` options against the real server process: concurrent calls go as
 * one CheckAndReserveBatch / ReleaseBatch (counted by a connect interceptor) with each call's own answer, error,
 * deadline and failure policy; leases admit locally, never past the quota across clients and processes, settle on
 * close, fall back to the remote path for remote-only plans and are not used past their end.
 */
import { spawn } from "node:child_process";
import * as net from "node:net";
import type { Interceptor } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createQuotaClient, QuotaInputError, QuotaRequestError, type CheckResult, type QuotaClient, type QuotaClientOptions } from "@quota-authority/client";
import { ADMIN, clients, type Clients } from "../support/clients.ts";
import type { ClientLeaseJob, ClientLeaseResult } from "../support/client-lease-worker.ts";
import { seedAccount } from "../support/fixtures.ts";
import { REPO_ROOT, ServerProcess, freePort } from "../support/server-process.ts";

const TOKEN = "client-batch-lease-token-3c9e71f0a2b84d5e";

const PLANS = `
plans:
  - id: cbl-5
    name: quota 5 a day
    methods: { default: 1, costs: { heavy: 3 } }
    limits: [{ name: daily, kind: quota, limit: 5, period: daily }]
  - id: cbl-40
    name: quota 40 a day
    methods: { default: 1, costs: { heavy: 3 } }
    limits: [{ name: daily, kind: quota, limit: 40, period: daily }]
  - id: cbl-400
    name: quota 400 a day
    limits: [{ name: daily, kind: quota, limit: 400, period: daily }]
  - id: cbl-rate
    name: quota and rate
    limits:
      - { name: daily, kind: quota, limit: 100, period: daily }
      - { name: rps, kind: rate, limit: 1000, window: 1s }
`;

let server: ServerProcess;
let admin: Clients;
const address = () => `127.0.0.1:${server.grpcPort}`;

beforeAll(async () => {
  server = await ServerProcess.create({ env: { QUOTA_SERVICE_TOKEN: TOKEN, QUOTA_STORE_DEADLINE_MS: "2000" } });
  await server.start();
  admin = clients("grpc-js", server.ports);
  await admin.admin.applyPlans({ document: PLANS }, ADMIN);
});

afterAll(async () => {
  admin?.close();
  await server?.cleanup();
});

/** Counts the RPCs a client sends, by method name. */
function counter(): { counts: Record<string, number>; interceptor: Interceptor } {
  const counts: Record<string, number> = {};
  return {
    counts,
    interceptor: (next) => (req) => {
      counts[req.method.name] = (counts[req.method.name] ?? 0) + 1;
      return next(req);
    },
  };
}

function client(extra: Partial<QuotaClientOptions>, interceptor?: Interceptor): QuotaClient {
  return createQuotaClient({ address: address(), token: TOKEN, deadlineMs: 5000, ...extra, ...(interceptor ? { interceptors: [interceptor] } : {}) });
}

async function usedOf(apiKey: string): Promise<bigint> {
  const c = client({});
  try {
    const gl = await c.getLimits({ apiKey });
    return gl.subscriptions[0]!.limits.find((l) => l.name === "daily")!.used;
  } finally {
    await c.close();
  }
}

describe("batching", () => {
  it("option checks name the field", () => {
    expect(() => client({ batching: { maxBatch: 0 } })).toThrow(QuotaInputError);
    expect(() => client({ batching: { maxBatch: 1001 } })).toThrow(/batching\.maxBatch/);
    expect(() => client({ batching: { maxDelayMs: -1 } })).toThrow(/batching\.maxDelayMs/);
  });

  it("N concurrent calls are ONE CheckAndReserveBatch, results in request order; exactly L of them admitted against a quota L; releases are one ReleaseBatch", async () => {
    const s = await seedAccount(admin, "cbl-5");
    const { counts, interceptor } = counter();
    const c = client({ batching: true }, interceptor);
    try {
      const results = await Promise.all(Array.from({ length: 12 }, () => c.checkAndReserve({ apiKey: s.apiKey, product: "p", method: "m" })));
      expect(counts).toEqual({ CheckAndReserveBatch: 1 });
      expect(results.filter((r) => r.allowed)).toHaveLength(5);
      for (const r of results.filter((r) => !r.allowed)) expect(r).toMatchObject({ decision: "DENIED", reason: "QUOTA_EXHAUSTED", deniedLimit: "daily" });
      const ids = results.flatMap((r) => (r.allowed && r.reservationId ? [r.reservationId] : []));
      expect(new Set(ids).size).toBe(5);

      const released = await Promise.all(ids.map((reservationId) => c.release({ reservationId, outcome: "CANCEL" })));
      expect(counts).toEqual({ CheckAndReserveBatch: 1, ReleaseBatch: 1 });
      for (const r of released) expect(r).toMatchObject({ state: "CANCELLED", refundedCost: 1n });
      expect(await usedOf(s.apiKey)).toBe(0n);

      // In order: each answer is its own request's (cost 3 for "heavy", 1 for the others).
      const methods = ["heavy", "m", "m", "heavy", "m"];
      const ordered = await Promise.all(methods.map((method) => c.checkAndReserve({ apiKey: s.apiKey, product: "p", method })));
      expect(counts.CheckAndReserveBatch).toBe(2);
      // 5 units: heavy (3) + m + m fit, then heavy (3) does not, then m does not (5 used). A denial reports the
      // cost it would have charged.
      expect(ordered.map((r) => [r.allowed, r.cost])).toEqual([
        [true, 3n],
        [true, 1n],
        [true, 1n],
        [false, 3n],
        [false, 1n],
      ]);
    } finally {
      await c.close();
    }
  });

  it("per-item errors: a bad item rejects with its own QuotaRequestError naming the field, the others are decided; client-side input errors never reach the batch", async () => {
    const s = await seedAccount(admin, "cbl-40");
    const { counts, interceptor } = counter();
    const c = client({ batching: { maxBatch: 50, maxDelayMs: 5 } }, interceptor);
    try {
      const settled = await Promise.allSettled([
        c.checkAndReserve({ apiKey: s.apiKey, product: "p", method: "m" }),
        c.checkAndReserve({ apiKey: s.apiKey, product: "Bad Product!", method: "m" }),
        c.checkAndReserve({ apiKey: "qa_nosuchkey_secret", product: "p", method: "m" }),
        c.checkAndReserve({ apiKey: s.apiKey, product: "p", method: "m", cost: 1.5 }),
        c.checkAndReserve({ apiKey: s.apiKey, product: "p", method: "m", cost: 2 }),
      ]);
      expect(counts).toEqual({ CheckAndReserveBatch: 1 });
      expect(settled[0]).toMatchObject({ status: "fulfilled", value: { allowed: true, cost: 1n } });
      expect(settled[1]!.status).toBe("rejected");
      const e1 = (settled[1] as PromiseRejectedResult).reason;
      expect(e1).toBeInstanceOf(QuotaRequestError);
      expect(e1).toMatchObject({ code: "invalidArgument" });
      expect(String(e1.message)).toMatch(/product/);
      expect(settled[2]).toMatchObject({ status: "fulfilled", value: { allowed: false, reason: "KEY_INVALID" } });
      const e3 = (settled[3] as PromiseRejectedResult).reason;
      expect(e3).toBeInstanceOf(QuotaInputError);
      expect(e3).toMatchObject({ field: "cost" });
      expect(settled[4]).toMatchObject({ status: "fulfilled", value: { allowed: true, cost: 2n } });
      expect(await usedOf(s.apiKey)).toBe(3n);
      // A release of an unknown reservation is its own error too.
      const r = await Promise.allSettled([c.release({ reservationId: "nonsense" }), c.release({ reservationId: (settled[0] as PromiseFulfilledResult<CheckResult & { reservationId: string }>).value.reservationId })]);
      expect(counts.ReleaseBatch).toBe(1);
      expect(r[0]).toMatchObject({ status: "rejected", reason: { code: "invalidArgument" } });
      expect(r[1]).toMatchObject({ status: "fulfilled", value: { state: "COMMITTED" } });
    } finally {
      await c.close();
    }
  });

  it("maxBatch splits a burst; a call with its own headers goes alone", async () => {
    const s = await seedAccount(admin, "cbl-40");
    const { counts, interceptor } = counter();
    const c = client({ batching: { maxBatch: 4 } }, interceptor);
    try {
      const results = await Promise.all([
        ...Array.from({ length: 10 }, () => c.checkAndReserve({ apiKey: s.apiKey, product: "p", method: "m" })),
        c.checkAndReserve({ apiKey: s.apiKey, product: "p", method: "m" }, { headers: { "x-request-id": "alone" } }),
      ]);
      expect(results.every((r) => r.allowed)).toBe(true);
      expect(counts).toEqual({ CheckAndReserveBatch: 3, CheckAndReserve: 1 });
    } finally {
      await c.close();
    }
  });

  it("an unreachable service: each call of the one batch gets its own failure policy", async () => {
    const port = await freePort();
    const { counts, interceptor } = counter();
    const c = createQuotaClient({ address: `127.0.0.1:${port}`, batching: true, deadlineMs: 2000, interceptors: [interceptor] });
    try {
      const [open, closed] = await Promise.all([
        c.checkAndReserve({ apiKey: "qa_a_b", product: "p", method: "m" }, { failureMode: "open" }),
        c.checkAndReserve({ apiKey: "qa_a_b", product: "p", method: "m" }, { failureMode: "closed" }),
      ]);
      expect(counts).toEqual({ CheckAndReserveBatch: 1 });
      expect(open).toMatchObject({ allowed: true, failOpen: true, reservationId: undefined, unavailable: { kind: "unreachable" } });
      expect(closed).toMatchObject({ allowed: false, reason: "UNAVAILABLE", unavailable: { kind: "unreachable" } });
    } finally {
      await c.close();
    }
  });

  it("per-call deadlines and signals inside one batch: the short deadline answers by its policy first, an aborted call rejects alone", async () => {
    // A server that accepts connections and never answers.
    const sockets: net.Socket[] = [];
    const silent = net.createServer((sock) => sockets.push(sock));
    await new Promise<void>((r) => silent.listen(0, "127.0.0.1", r));
    const port = (silent.address() as net.AddressInfo).port;
    const c = createQuotaClient({ address: `127.0.0.1:${port}`, batching: true, deadlineMs: 1500 });
    try {
      const ac = new AbortController();
      const t0 = Date.now();
      const times: number[] = [];
      const stamp = <T>(p: Promise<T>, i: number) => p.finally(() => (times[i] = Date.now() - t0));
      const all = Promise.allSettled([
        stamp(c.checkAndReserve({ apiKey: "qa_a_b", product: "p", method: "m" }, { deadlineMs: 200 }), 0),
        stamp(c.checkAndReserve({ apiKey: "qa_a_b", product: "p", method: "m" }, { signal: ac.signal }), 1),
        stamp(c.checkAndReserve({ apiKey: "qa_a_b", product: "p", method: "m" }, { failureMode: "open" }), 2),
      ]);
      setTimeout(() => ac.abort(), 400);
      const [short, aborted, long] = await all;
      expect(short).toMatchObject({ status: "fulfilled", value: { allowed: false, reason: "UNAVAILABLE", unavailable: { kind: "deadline" } } });
      expect(aborted).toMatchObject({ status: "rejected", reason: { name: "QuotaCanceledError" } });
      expect(long).toMatchObject({ status: "fulfilled", value: { allowed: true, failOpen: true, unavailable: { kind: "deadline" } } });
      expect(times[0]).toBeLessThan(times[1]!);
      expect(times[1]).toBeLessThan(times[2]!);
      expect(times[2]).toBeGreaterThanOrEqual(1400);
    } finally {
      await c.close();
      for (const s of sockets) s.destroy();
      silent.close();
    }
  });
});

describe("leases", () => {
  it("option checks name the field", () => {
    expect(() => client({ leases: { calls: 0 } })).toThrow(/leases\.calls/);
    expect(() => client({ leases: { ttlMs: 500 } })).toThrow(/leases\.ttlMs/);
  });

  it("admits locally (no reservation, `lease` set), exactly the quota on a small one, DENIED stops granting, close() settles: the counter equals what was admitted", async () => {
    const s = await seedAccount(admin, "cbl-5");
    const { counts, interceptor } = counter();
    const c = client({ leases: { calls: 100 } }, interceptor);
    const results: CheckResult[] = [];
    for (let i = 0; i < 7; i++) results.push(await c.checkAndReserve({ apiKey: s.apiKey, product: "p", method: "m" }));
    // Grants shrink to a quarter of what is left (at least one call): 5 calls, each on its own lease.
    expect(results.map((r) => r.allowed)).toEqual([true, true, true, true, true, false, false]);
    for (const r of results.slice(0, 5)) {
      expect(r).toMatchObject({ reservationId: undefined, cost: 1n });
      expect(r.allowed && r.lease?.leaseId).toMatch(/^lease~1~/);
    }
    expect(results[5]).toMatchObject({ decision: "DENIED", reason: "QUOTA_EXHAUSTED" });
    expect(counts.CheckAndReserve).toBeUndefined();
    await c.close();
    expect(await usedOf(s.apiKey)).toBe(5n);
  });

  it("a bigger quota: most calls decided with no RPC; used equals admitted after close", async () => {
    const s = await seedAccount(admin, "cbl-400");
    const { counts, interceptor } = counter();
    const c = client({ leases: { calls: 50 } }, interceptor);
    let admitted = 0;
    let local = 0;
    const all: CheckResult[] = [];
    for (let i = 0; i < 120; i++) {
      const r = await c.checkAndReserve({ apiKey: s.apiKey, product: "p", method: "m" });
      all.push(r);
      if (r.allowed) admitted++;
      if (r.allowed && r.lease) local++;
    }
    expect(admitted).toBe(120);
    expect(local).toBe(120);
    // The calls of one lease report its limits (converted once per lease, copied per result): a caller that changes
    // its result changes no other.
    expect(all[0]!.limits).toEqual(all[1]!.limits);
    expect(all[0]!.limits[0]).toMatchObject({ name: "daily", kind: "QUOTA" });
    const reset = all[1]!.limits[0]!.resetsAt!.getTime();
    all[0]!.limits[0]!.used = -1n;
    all[0]!.limits[0]!.resetsAt!.setTime(0);
    all[0]!.limits.pop();
    expect(all[1]!.limits).toHaveLength(1);
    expect(all[1]!.limits[0]!.used).not.toBe(-1n);
    expect(all[1]!.limits[0]!.resetsAt!.getTime()).toBe(reset);
    expect(counts.Lease).toBeLessThanOrEqual(4);
    // The held lease counts all of its grant until it is settled.
    expect(await usedOf(s.apiKey)).toBeGreaterThan(120n);
    await c.close();
    expect(await usedOf(s.apiKey)).toBe(120n);
  });

  it("4 clients in one process, concurrent bursts: never more admitted than the quota, and the counter equals admitted after close", async () => {
    const s = await seedAccount(admin, "cbl-400");
    const cs = Array.from({ length: 4 }, () => client({ leases: { calls: 40 } }));
    const admitted = [0, 0, 0, 0];
    await Promise.all(
      cs.map(async (c, n) => {
        for (let round = 0; round < 200; round++) {
          const rs = await Promise.all(Array.from({ length: 8 }, () => c.checkAndReserve({ apiKey: s.apiKey, product: "p", method: "m" })));
          admitted[n]! += rs.filter((r) => r.allowed).length;
          if (rs.some((r) => !r.allowed)) break;
        }
      }),
    );
    const total = admitted.reduce((a, b) => a + b, 0);
    expect(total).toBeLessThanOrEqual(400);
    expect(total).toBeGreaterThan(0);
    await Promise.all(cs.map((c) => c.close()));
    expect(await usedOf(s.apiKey)).toBe(BigInt(total));
  });

  it("4 client processes against one quota: admitted ≤ quota, counter equals admitted once every client closed", async () => {
    const s = await seedAccount(admin, "cbl-400");
    const startAt = Date.now() + 1500;
    const job = (): ClientLeaseJob => ({ address: address(), token: TOKEN, apiKey: s.apiKey, product: "p", method: "m", calls: 40, burst: 8, startAt, deadlineMs: 20_000 });
    const outs = await Promise.all(
      Array.from(
        { length: 4 },
        () =>
          new Promise<ClientLeaseResult>((resolve, reject) => {
            const child = spawn(process.execPath, ["test/support/client-lease-worker.ts", JSON.stringify(job())], { cwd: REPO_ROOT, stdio: ["ignore", "pipe", "pipe"] });
            let out = "";
            let err = "";
            child.stdout.on("data", (d: Buffer) => (out += d.toString()));
            child.stderr.on("data", (d: Buffer) => (err += d.toString()));
            child.on("exit", (code) => (code === 0 ? resolve(JSON.parse(out.trim().split("\n").pop()!) as ClientLeaseResult) : reject(new Error(`worker exit ${code}: ${err}`))));
          }),
      ),
    );
    const total = outs.reduce((a, o) => a + o.admitted, 0);
    console.info(`client leases, 4 processes, quota 400: admitted ${total} (${outs.map((o) => o.admitted).join(" + ")}), Lease RPCs ${outs.reduce((a, o) => a + o.leaseRpcs, 0)}`);
    expect(total).toBeLessThanOrEqual(400);
    expect(outs.every((o) => o.admitted > 0 && o.checkRpcs === 0)).toBe(true);
    // Local decisions: far fewer Lease RPCs than admitted calls.
    expect(outs.reduce((a, o) => a + o.leaseRpcs, 0)).toBeLessThan(total);
    expect(await usedOf(s.apiKey)).toBe(BigInt(total));
  }, 60_000);

  it("remote-only plans (a rate limit): LEASE_REMOTE_ONLY falls back to CheckAndReserve, remembered for the key", async () => {
    const s = await seedAccount(admin, "cbl-rate");
    const { counts, interceptor } = counter();
    const c = client({ leases: true }, interceptor);
    try {
      const a = await c.checkAndReserve({ apiKey: s.apiKey, product: "p", method: "m" });
      const b = await c.checkAndReserve({ apiKey: s.apiKey, product: "p", method: "m" });
      for (const r of [a, b]) {
        expect(r.allowed).toBe(true);
        if (!r.allowed) throw new Error("unreachable");
        expect(r.lease).toBeUndefined();
        expect(r.reservationId).toMatch(/^r~/);
        await c.release({ reservationId: r.reservationId! });
      }
      expect(counts).toEqual({ Lease: 1, CheckAndReserve: 2, Release: 2 });
    } finally {
      await c.close();
    }
    expect(await usedOf(s.apiKey)).toBe(2n);
  });

  it("calls that need a reservation (explicit cost, `lease: false`) are decided remotely", async () => {
    const s = await seedAccount(admin, "cbl-40");
    const { counts, interceptor } = counter();
    const c = client({ leases: true }, interceptor);
    try {
      const a = await c.checkAndReserve({ apiKey: s.apiKey, product: "p", method: "m", cost: 2 });
      const b = await c.checkAndReserve({ apiKey: s.apiKey, product: "p", method: "m" }, { lease: false });
      expect(a).toMatchObject({ allowed: true, lease: undefined, cost: 2n });
      expect(b).toMatchObject({ allowed: true, lease: undefined, cost: 1n });
      expect(counts).toEqual({ CheckAndReserve: 2 });
    } finally {
      await c.close();
    }
  });

  it("a caller waiting on another caller's Lease call keeps its own deadline and signal", async () => {
    const sockets: net.Socket[] = [];
    const silent = net.createServer((sock) => sockets.push(sock));
    await new Promise<void>((r) => silent.listen(0, "127.0.0.1", r));
    const port = (silent.address() as net.AddressInfo).port;
    const c = createQuotaClient({ address: `127.0.0.1:${port}`, leases: true, deadlineMs: 1500 });
    try {
      const ac = new AbortController();
      const t0 = Date.now();
      const times: number[] = [];
      const stamp = <T>(p: Promise<T>, i: number) => p.finally(() => (times[i] = Date.now() - t0));
      const all = Promise.allSettled([
        stamp(c.checkAndReserve({ apiKey: "qa_a_b", product: "p", method: "m" }, { failureMode: "open" }), 0),
        stamp(c.checkAndReserve({ apiKey: "qa_a_b", product: "p", method: "m" }, { deadlineMs: 200 }), 1),
        stamp(c.checkAndReserve({ apiKey: "qa_a_b", product: "p", method: "m" }, { signal: ac.signal }), 2),
      ]);
      setTimeout(() => ac.abort(), 400);
      const [first, short, aborted] = await all;
      expect(first).toMatchObject({ status: "fulfilled", value: { allowed: true, failOpen: true, lease: undefined, unavailable: { kind: "deadline" } } });
      expect(short).toMatchObject({ status: "fulfilled", value: { allowed: false, reason: "UNAVAILABLE", unavailable: { kind: "deadline" } } });
      expect(aborted).toMatchObject({ status: "rejected", reason: { name: "QuotaCanceledError" } });
      expect(times[1]).toBeLessThan(1000);
      expect(times[2]).toBeLessThan(1000);
      expect(times[0]).toBeGreaterThanOrEqual(1400);
    } finally {
      await c.close();
      for (const s of sockets) s.destroy();
      silent.close();
    }
  });

  it("expiry honoured: no local decision on a lease past its end; the next call takes a new lease and the old one is settled", async () => {
    const s = await seedAccount(admin, "cbl-400");
    const { counts, interceptor } = counter();
    const c = client({ leases: { calls: 50, ttlMs: 1000 } }, interceptor);
    const a = await c.checkAndReserve({ apiKey: s.apiKey, product: "p", method: "m" });
    expect(a.allowed && a.lease).toBeTruthy();
    const first = a.allowed ? a.lease! : undefined!;
    expect(first.usableUntil.getTime()).toBeLessThanOrEqual(Date.now() + 1000);
    await new Promise((r) => setTimeout(r, 1300));
    const b = await c.checkAndReserve({ apiKey: s.apiKey, product: "p", method: "m" });
    expect(b.allowed && b.lease).toBeTruthy();
    expect(b.allowed && b.lease!.leaseId).not.toBe(first.leaseId);
    // The first lease was settled when it ended (an idle lease is not renewed), the second by close().
    expect(counts.Lease).toBe(3);
    await c.close();
    expect(await usedOf(s.apiKey)).toBe(2n);
  });
});
