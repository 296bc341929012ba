/**
 * @quota-authority/client against the real server process (Postgres, Redis), over both transports: typed
 * CheckAndReserve / Release / TopUp / GetLimits, the service token, bad input caught before sending, server
 * rejections as QuotaRequestError, and the failure policy (fail open / fail closed) when the service is unreachable
 * or does not answer within the deadline.
 */
import * as http2 from "node:http2";
import * as net from "node:net";
import { Code, ConnectError } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { QuotaService } from "../../src/gen/quota/v1/quota_pb.ts";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  createQuotaClient,
  QuotaInputError,
  QuotaRequestError,
  QuotaUnavailableError,
  QuotaCanceledError,
  type QuotaClient,
  type TransportKind,
} from "@quota-authority/client";
import { ADMIN, clients, type Clients } from "../support/clients.ts";
import { deposit, seedAccount } from "../support/fixtures.ts";
import { ServerProcess, freePort } from "../support/server-process.ts";

const SERVICE_TOKEN = "client-test-service-token-7f3a9c1e5b2d4f60";

const PLANS = `
plans:
  - id: cl
    name: Client test (5 a month, 1 in flight)
    products: [cl-api]
    methods: { default: 1, costs: { things.search: 2 } }
    limits:
      - { name: monthly, kind: quota, scope: subscription, limit: 5, period: monthly }
      - { name: inflight, kind: concurrency, scope: key, limit: 1 }
      - { name: rps, kind: rate, scope: key, limit: 100, window: 1s }
    topUp: { limit: monthly, increment: 5, price: { units: 5, amount: "0.50" } }
`;

let server: ServerProcess;
let admin: Clients;

beforeAll(async () => {
  // A generous counter-store deadline: on a loaded CI machine the default 50 ms would turn slow Redis answers into
  // the plan's fail-closed UNAVAILABLE denials.
  server = await ServerProcess.create({ env: { QUOTA_SERVICE_TOKEN: SERVICE_TOKEN, QUOTA_STORE_DEADLINE_MS: "2000" } });
  await server.start();
  admin = clients("grpc-js", server.ports);
  await admin.admin.applyPlans({ document: PLANS }, ADMIN);
});

afterAll(async () => {
  admin?.close();
  await server?.cleanup();
});

const addressOf = (t: TransportKind) => `127.0.0.1:${t === "grpc" ? server.grpcPort : server.httpPort}`;

for (const transport of ["grpc", "connect"] as const) {
  describe(`transport ${transport}`, () => {
    let client: QuotaClient;
    beforeAll(() => {
      client = createQuotaClient({ address: addressOf(transport), transport, token: SERVICE_TOKEN, deadlineMs: 5000 });
    });
    afterAll(() => client?.close());

    it("CheckAndReserve, Release with the actual cost (and its replay), TopUp from the wallet, GetLimits, then QUOTA_EXHAUSTED", async () => {
      const s = await seedAccount(admin, "cl");
      await deposit(admin, s.accountId, "prepaid", 5n);

      const a = await client.checkAndReserve({ apiKey: s.apiKey, product: "cl-api", method: "things.search" });
      expect(a.allowed).toBe(true);
      if (!a.allowed) throw new Error("unreachable");
      expect(a).toMatchObject({ decision: "ALLOWED", reason: undefined, cost: 2n, failOpen: false, overage: false, replayed: false, unavailable: undefined });
      expect(a.reservationId).toMatch(new RegExp(`^r~${s.accountId}~`));
      expect(a.limits.find((l) => l.name === "monthly")).toMatchObject({ kind: "QUOTA", scope: "SUBSCRIPTION", limit: 5n, used: 2n, remaining: 3n, exceeded: false });
      expect(a.limits.find((l) => l.name === "monthly")!.resetsAt).toBeInstanceOf(Date);
      expect(a.limits.find((l) => l.name === "rps")).toMatchObject({ kind: "RATE", scope: "KEY", windowMs: 1000 });
      expect(a.headers["X-UnitsLimit-Quota-Remaining"]).toBe("3");
      expect(a.headers["RateLimit-Policy"]).toContain('"monthly";q=5');

      // The only slot is held until the Release.
      const busy = await client.checkAndReserve({ apiKey: s.apiKey, product: "cl-api", method: "things.list" });
      expect(busy).toMatchObject({ allowed: false, decision: "DENIED", reason: "CONCURRENCY_LIMITED", deniedLimit: "inflight" });

      const r1 = await client.release({ reservationId: a.reservationId!, actualCost: 1 });
      expect(r1).toEqual({ state: "COMMITTED", chargedCost: 1n, refundedCost: 1n, chargedSpendMicros: 0n, overage: 0n, replayed: false });
      const r2 = await client.release({ reservationId: a.reservationId!, actualCost: 1 });
      expect(r2).toMatchObject({ state: "COMMITTED", chargedCost: 1n, replayed: true });

      const tu = await client.topUp({
        apiKey: s.apiKey,
        idempotencyKey: `cl-${transport}-1`,
        target: { case: "quota", value: { lines: [{ units: 5n }] } },
        funding: { case: "fromWallet", value: {} },
      });
      expect(tu.newLimit).toBe(10n);
      expect(tu.newBalance).toMatchObject({ units: 4n, nanos: 500_000_000 });

      const gl = await client.getLimits({ apiKey: s.apiKey });
      expect(gl.accountId).toBe(s.accountId);
      expect(gl.subscriptions[0]!.limits.find((l) => l.name === "monthly")).toMatchObject({ limit: 10n, used: 1n, remaining: 9n });

      for (let i = 0; i < 9; i++) {
        const x = await client.checkAndReserve({ apiKey: s.apiKey, product: "cl-api", method: "things.list" });
        expect(x.allowed, `call ${i}`).toBe(true);
        await client.release({ reservationId: (x as { reservationId: string }).reservationId });
      }
      const denied = await client.checkAndReserve({ apiKey: s.apiKey, product: "cl-api", method: "things.list" });
      expect(denied).toMatchObject({ allowed: false, reason: "QUOTA_EXHAUSTED", deniedLimit: "monthly", unavailable: undefined });
      expect(denied.retryAfterMs).toBeGreaterThan(0);
      expect(denied.headers["Retry-After"]).toMatch(/^\d+$/);
    });

    it("a key id instead of the API key; CHECK_ONLY reserves nothing; a reservation TTL is accepted", async () => {
      const s = await seedAccount(admin, "cl");
      const dry = await client.checkAndReserve({ keyId: s.keyId, product: "cl-api", method: "things.list", mode: "CHECK_ONLY" });
      expect(dry).toMatchObject({ allowed: true, reservationId: undefined });
      const real = await client.checkAndReserve({ keyId: s.keyId, product: "cl-api", method: "things.list", reservationTtlMs: 5000, idempotencyId: "idem-1" });
      expect(real.allowed).toBe(true);
      const again = await client.checkAndReserve({ keyId: s.keyId, product: "cl-api", method: "things.list", reservationTtlMs: 5000, idempotencyId: "idem-1" });
      expect(again).toMatchObject({ allowed: true, replayed: true, reservationId: (real as { reservationId: string }).reservationId });
    });

    it("the server's INVALID_ARGUMENT is a QuotaRequestError naming the field — never a denial, never 'unavailable', whatever the failure mode", async () => {
      const s = await seedAccount(admin, "cl");
      for (const failureMode of ["open", "closed"] as const) {
        const e = await client.checkAndReserve({ apiKey: s.apiKey, product: "cl-api", method: "no spaces allowed" }, { failureMode }).catch((x: unknown) => x);
        expect(e).toBeInstanceOf(QuotaRequestError);
        expect((e as QuotaRequestError).code).toBe("invalidArgument");
        expect((e as QuotaRequestError).message).toContain("method");
      }
      const unknownRes = await client.release({ reservationId: `r~${s.accountId}~nosuchreservation0000000000000` }).catch((x: unknown) => x);
      expect(unknownRes).toBeInstanceOf(QuotaRequestError);
    });

    it("FAILED_PRECONDITION carries its reason (INSUFFICIENT_BALANCE) in QuotaRequestError.reason", async () => {
      const s = await seedAccount(admin, "cl");
      const e = await client
        .topUp({ apiKey: s.apiKey, idempotencyKey: `broke-${transport}`, target: { case: "quota", value: { lines: [{ units: 5n }] } }, funding: { case: "fromWallet", value: {} } })
        .catch((x: unknown) => x);
      expect(e).toBeInstanceOf(QuotaRequestError);
      expect(e).toMatchObject({ code: "failedPrecondition", reason: "INSUFFICIENT_BALANCE" });
      expect((e as Error).message).toContain("insufficient wallet balance");
    });

    it("a wrong service token is UNAUTHENTICATED (a configuration bug to surface), even with failureMode open", async () => {
      const s = await seedAccount(admin, "cl");
      const bad = createQuotaClient({ address: addressOf(transport), transport, token: "wrong-token", failureMode: "open", deadlineMs: 5000 });
      try {
        const e = await bad.checkAndReserve({ apiKey: s.apiKey, product: "cl-api", method: "things.list" }).catch((x: unknown) => x);
        expect(e).toBeInstanceOf(QuotaRequestError);
        expect((e as QuotaRequestError).code).toBe("unauthenticated");
      } finally {
        bad.close();
      }
    });

    it("close() ends the connection; a later call opens a new one", async () => {
      const s = await seedAccount(admin, "cl");
      const c = createQuotaClient({ address: addressOf(transport), transport, token: SERVICE_TOKEN, deadlineMs: 5000 });
      try {
        expect((await c.checkAndReserve({ apiKey: s.apiKey, product: "cl-api", method: "things.list", mode: "CHECK_ONLY" })).allowed).toBe(true);
        c.close();
        expect((await c.checkAndReserve({ apiKey: s.apiKey, product: "cl-api", method: "things.list", mode: "CHECK_ONLY" })).allowed).toBe(true);
      } finally {
        c.close();
      }
    });

    it("the caller's AbortSignal rejects with QuotaCanceledError (no failure policy applies)", async () => {
      const s = await seedAccount(admin, "cl");
      const ac = new AbortController();
      ac.abort();
      const e = await client.checkAndReserve({ apiKey: s.apiKey, product: "cl-api", method: "things.list" }, { signal: ac.signal, failureMode: "open" }).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(QuotaCanceledError);
    });
  });
}

describe("bad input is caught before anything is sent (QuotaInputError naming the field)", () => {
  const client = createQuotaClient({ address: "127.0.0.1:1" });
  afterAll(() => client.close());
  const cases: Array<[string, () => Promise<unknown>]> = [
    ["cost", () => client.checkAndReserve({ apiKey: "k", product: "p", method: "m", cost: 1.5 })],
    ["cost", () => client.checkAndReserve({ apiKey: "k", product: "p", method: "m", cost: "3" as never })],
    ["meters.tokens", () => client.checkAndReserve({ apiKey: "k", product: "p", method: "m", meters: { tokens: Number.NaN } })],
    ["estimatedSpendMicros", () => client.checkAndReserve({ apiKey: "k", product: "p", method: "m", estimatedSpendMicros: 2 ** 60 })],
    ["apiKey", () => client.checkAndReserve({ apiKey: "k", keyId: "x", product: "p", method: "m" } as never)],
    ["apiKey", () => client.checkAndReserve({ product: "p", method: "m" } as never)],
    ["product", () => client.checkAndReserve({ apiKey: "k", method: "m" } as never)],
    ["method", () => client.checkAndReserve({ apiKey: "k", product: "p", method: "" })],
    ["mode", () => client.checkAndReserve({ apiKey: "k", product: "p", method: "m", mode: "LOUD" as never })],
    ["reservationTtlMs", () => client.checkAndReserve({ apiKey: "k", product: "p", method: "m", reservationTtlMs: 0 })],
    ["failureMode", () => client.checkAndReserve({ apiKey: "k", product: "p", method: "m" }, { failureMode: "maybe" as never })],
    ["deadlineMs", () => client.checkAndReserve({ apiKey: "k", product: "p", method: "m" }, { deadlineMs: -1 })],
    ["reservationId", () => client.release({ reservationId: "" })],
    ["outcome", () => client.release({ reservationId: "r", outcome: "REFUND" as never })],
    ["actualCost", () => client.release({ reservationId: "r", actualCost: 0.1 })],
    ["actualMeters.tokens", () => client.release({ reservationId: "r", actualMeters: { tokens: 1e300 } })],
  ];
  for (const [field, call] of cases) {
    it(`${field}: ${call.toString().slice(6, 110)}`, async () => {
      const e = await call().catch((x: unknown) => x);
      expect(e).toBeInstanceOf(QuotaInputError);
      expect((e as QuotaInputError).field).toBe(field);
      expect((e as Error).message.startsWith(`${field}: `)).toBe(true);
    });
  }

  it("options: address, transport, deadlineMs, failureMode, token, tls", () => {
    const field = (f: () => unknown) => {
      try {
        f();
      } catch (e) {
        expect(e).toBeInstanceOf(QuotaInputError);
        return (e as QuotaInputError).field;
      }
      return "no error";
    };
    expect(field(() => createQuotaClient({ address: "" }))).toBe("address");
    expect(field(() => createQuotaClient({ address: "localhost" }))).toBe("address");
    expect(field(() => createQuotaClient({ address: "ftp://x:1" }))).toBe("address");
    expect(field(() => createQuotaClient({ address: "127.0.0.1:1", transport: "http" as never }))).toBe("transport");
    expect(field(() => createQuotaClient({ address: "127.0.0.1:1", deadlineMs: 0 }))).toBe("deadlineMs");
    expect(field(() => createQuotaClient({ address: "127.0.0.1:1", controlDeadlineMs: Number.NaN }))).toBe("controlDeadlineMs");
    expect(field(() => createQuotaClient({ address: "127.0.0.1:1", failureMode: "sometimes" as never }))).toBe("failureMode");
    expect(field(() => createQuotaClient({ address: "127.0.0.1:1", token: "a\nb" }))).toBe("token");
    expect(field(() => createQuotaClient({ address: "127.0.0.1:1", tls: { ca: "x" } }))).toBe("tls");
    expect(field(() => createQuotaClient({ address: "127.0.0.1:1", httpVersion: "1.1" }))).toBe("httpVersion");
    expect(field(() => createQuotaClient({ address: "https://quota.internal", transport: "connect", httpVersion: "1.1" }).close())).toBe("no error");
  });
});

describe("the quota service unavailable: the client's failure policy", () => {
  let closedPort: number;
  let blackHole: net.Server;
  let blackHolePort: number;
  const sockets = new Set<net.Socket>();

  beforeAll(async () => {
    closedPort = await freePort();
    // Accepts connections and never answers: the deadline must end the call.
    blackHole = net.createServer((s) => {
      sockets.add(s);
      s.on("error", () => {});
      s.on("close", () => sockets.delete(s));
    });
    await new Promise<void>((r) => blackHole.listen(0, "127.0.0.1", r));
    blackHolePort = (blackHole.address() as net.AddressInfo).port;
  });
  afterAll(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((r) => blackHole.close(() => r()));
  });

  for (const transport of ["grpc", "connect"] as const) {
    it(`${transport}: connection refused — closed: DENIED UNAVAILABLE; open: ALLOWED failOpen without a reservation; release throws`, async () => {
      const closed = createQuotaClient({ address: `127.0.0.1:${closedPort}`, transport, failureMode: "closed" });
      const open = createQuotaClient({ address: `127.0.0.1:${closedPort}`, transport, failureMode: "open" });
      try {
        const d = await closed.checkAndReserve({ apiKey: "qa_x_y", product: "p", method: "m" });
        expect(d).toMatchObject({ allowed: false, decision: "DENIED", reason: "UNAVAILABLE", limits: [], headers: {} });
        expect(d.unavailable).toBeInstanceOf(QuotaUnavailableError);
        expect(d.unavailable!.kind).toBe("unreachable");

        const a = await open.checkAndReserve({ apiKey: "qa_x_y", product: "p", method: "m" });
        expect(a).toMatchObject({ allowed: true, decision: "ALLOWED", failOpen: true, reservationId: undefined });
        expect(a.unavailable!.kind).toBe("unreachable");

        // The per-call policy replaces the client's.
        expect((await closed.checkAndReserve({ apiKey: "qa_x_y", product: "p", method: "m" }, { failureMode: "open" })).allowed).toBe(true);
        expect((await open.checkAndReserve({ apiKey: "qa_x_y", product: "p", method: "m" }, { failureMode: "closed" })).allowed).toBe(false);

        const rel = await closed.release({ reservationId: "r~a~b" }).catch((x: unknown) => x);
        expect(rel).toBeInstanceOf(QuotaUnavailableError);
        const gl = await closed.getLimits({ apiKey: "qa_x_y" }).catch((x: unknown) => x);
        expect(gl).toBeInstanceOf(QuotaUnavailableError);
      } finally {
        closed.close();
        open.close();
      }
    });

    it(`${transport}: no answer within deadlineMs — kind "deadline", answered by the policy`, async () => {
      const c = createQuotaClient({ address: `127.0.0.1:${blackHolePort}`, transport, deadlineMs: 150, failureMode: "closed" });
      try {
        const d = await c.checkAndReserve({ apiKey: "qa_x_y", product: "p", method: "m" });
        expect(d).toMatchObject({ allowed: false, reason: "UNAVAILABLE" });
        expect(d.unavailable!.kind).toBe("deadline");
        const o = await c.checkAndReserve({ apiKey: "qa_x_y", product: "p", method: "m" }, { failureMode: "open", deadlineMs: 100 });
        expect(o).toMatchObject({ allowed: true, failOpen: true });
        expect(o.unavailable!.kind).toBe("deadline");
      } finally {
        c.close();
      }
    });
  }
});

describe("which server errors count as 'unavailable' (a stand-in QuotaService that fails with a chosen code)", () => {
  let fake: http2.Http2Server;
  let port: number;
  const CODES: Record<string, Code> = {
    unavailable: Code.Unavailable,
    internal: Code.Internal,
    unknown: Code.Unknown,
    exhausted: Code.ResourceExhausted,
    aborted: Code.Aborted,
    invalid: Code.InvalidArgument,
    unauthenticated: Code.Unauthenticated,
    denied: Code.PermissionDenied,
    notfound: Code.NotFound,
    precondition: Code.FailedPrecondition,
    unimplemented: Code.Unimplemented,
  };

  beforeAll(async () => {
    const handler = connectNodeAdapter({
      routes: (router) =>
        router.service(QuotaService, {
          checkAndReserve(req) {
            throw new ConnectError(`failing as ${req.product}`, CODES[req.product] ?? Code.Internal);
          },
        }),
    });
    fake = http2.createServer(handler);
    await new Promise<void>((r) => fake.listen(0, "127.0.0.1", r));
    port = (fake.address() as net.AddressInfo).port;
  });
  afterAll(async () => {
    await new Promise<void>((r) => fake.close(() => r()));
  });

  for (const transport of ["grpc", "connect"] as const) {
    it(`${transport}: UNAVAILABLE, INTERNAL, UNKNOWN, RESOURCE_EXHAUSTED, ABORTED -> the failure policy (kind "server"); the rest -> QuotaRequestError`, async () => {
      const c = createQuotaClient({ address: `127.0.0.1:${port}`, transport, failureMode: "closed", deadlineMs: 5000 });
      try {
        for (const product of ["unavailable", "internal", "unknown", "exhausted", "aborted"]) {
          const r = await c.checkAndReserve({ apiKey: "qa_x_y", product, method: "m" });
          expect(r, product).toMatchObject({ allowed: false, reason: "UNAVAILABLE" });
          expect(r.unavailable?.kind, product).toBe("server");
        }
        for (const product of ["invalid", "unauthenticated", "denied", "notfound", "precondition", "unimplemented"]) {
          const e = await c.checkAndReserve({ apiKey: "qa_x_y", product, method: "m" }).catch((x: unknown) => x);
          expect(e, product).toBeInstanceOf(QuotaRequestError);
          expect((e as Error).message, product).toBe(`failing as ${product}`);
        }
        // Not implemented by the stand-in: UNIMPLEMENTED is a request error, not an outage.
        expect(await c.getLimits({ apiKey: "qa_x_y" }).catch((x: unknown) => x)).toBeInstanceOf(QuotaRequestError);
      } finally {
        c.close();
      }
    });
  }
});
