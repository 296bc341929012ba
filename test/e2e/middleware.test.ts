/**
 * The Express, Fastify and Hono (@hono/node-server) middleware of @quota-authority/client: real apps on real ports,
 * called with fetch, in front of the real server process (Postgres, Redis). Each case checks what a caller sees
 * (status, headers, body) and what the quota service recorded afterwards (GetLimits): that Release happened, with
 * COMMIT and the actual cost, or CANCEL on a thrown handler and on a client abort.
 */
import { once } from "node:events";
import type { AddressInfo } from "node:net";
import type { Server } from "node:http";
import express from "express";
import Fastify, { type FastifyRequest } from "fastify";
import { Hono } from "hono";
import { serve } from "@hono/node-server";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createQuotaClient, QuotaUnavailableError, type QuotaClient, type QuotaError } from "@quota-authority/client";
import { quotaLimit as expressQuota } from "@quota-authority/client/express";
import { quotaLimit as fastifyQuota } from "@quota-authority/client/fastify";
import { quotaLimit as honoQuota, type QuotaEnv } from "@quota-authority/client/hono";
import type { Denial, ErrorPhase } from "@quota-authority/client";
import { ADMIN, clients, type Clients } from "../support/clients.ts";
import { deposit, seedAccount } from "../support/fixtures.ts";
import { ServerProcess, freePort } from "../support/server-process.ts";
import { sleep } from "../support/time.ts";

const PLANS = `
plans:
  - id: mw
    name: Middleware (5 a month, 1 in flight)
    products: [mw-api]
    methods: { default: 1 }
    limits:
      - { name: monthly, kind: quota, scope: subscription, limit: 5, period: monthly }
      - { name: inflight, kind: concurrency, scope: key, limit: 1 }
  - id: mw-credit
    name: Middleware credit
    limits:
      - { name: credit, kind: budget, scope: account }
    pricing: { perCall: "0.0001" }
    credit: { minimumDeposit: "10.00" }
`;

/** What each framework's app is built from: the same knobs, mapped to each framework's own callback shapes. */
interface Knobs {
  client: QuotaClient;
  skipOnError?: boolean;
  standardHeaders?: boolean;
  quotaHeaders?: boolean;
  cancelOnError?: boolean;
  /** Requests with `x-custom-denied: 1` get a 418 from onDenied; the others fall through to the default. */
  customDenied?: boolean;
  /** Records onError calls. */
  errors?: Array<{ error: QuotaError; phase: ErrorPhase }>;
}

interface App {
  url: string;
  /** Handler invocations, by route. */
  calls: Record<string, number>;
  /** Resolves when the /hang handler for `x-test-id: id` started. */
  started(id: string): Promise<void>;
  close(): Promise<void>;
}

function tracker() {
  const calls: Record<string, number> = {};
  const waiting = new Map<string, () => void>();
  const begun = new Set<string>();
  return {
    calls,
    hit(route: string) {
      calls[route] = (calls[route] ?? 0) + 1;
    },
    begin(id: string | undefined) {
      if (!id) return;
      begun.add(id);
      waiting.get(id)?.();
    },
    started(id: string) {
      return begun.has(id) ? Promise.resolve() : new Promise<void>((r) => waiting.set(id, r));
    },
  };
}

const spendOf = (v: string | undefined) => (v ? BigInt(v) : undefined);
const deniedBody = (d: Denial) => `custom: ${d.reason} ${d.status}`;

async function expressApp(k: Knobs): Promise<App> {
  const t = tracker();
  const app = express();
  app.use(
    expressQuota({
      client: k.client,
      getKey: (req) => req.get("x-api-key"),
      product: "mw-api",
      method: "things.list",
      estimatedSpendMicros: (req) => spendOf(req.get("x-spend")),
      actualCost: (_req, res) => res.locals.actualCost as number | undefined,
      ...(k.skipOnError !== undefined ? { skipOnError: k.skipOnError } : {}),
      ...(k.standardHeaders !== undefined ? { standardHeaders: k.standardHeaders } : {}),
      ...(k.quotaHeaders !== undefined ? { quotaHeaders: k.quotaHeaders } : {}),
      ...(k.cancelOnError !== undefined ? { cancelOnError: k.cancelOnError } : {}),
      ...(k.customDenied ? { onDenied: (d, req, res) => void (req.get("x-custom-denied") && res.status(418).type("text").send(deniedBody(d))) } : {}),
      ...(k.errors ? { onError: (error, { phase }) => void k.errors!.push({ error, phase }) } : {}),
    }),
  );
  app.get("/ok", (_req, res) => {
    t.hit("ok");
    const q = res.locals.quota as { limits: Array<{ name: string; remaining: bigint }> } | undefined;
    res.json({ ok: true, remaining: String(q?.limits.find((l) => l.name === "monthly")?.remaining ?? "") });
  });
  app.get("/cost/:n", (req, res) => {
    t.hit("cost");
    res.locals.actualCost = Number(req.params.n);
    res.json({ ok: true });
  });
  app.get("/raw", (_req, res) => {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("raw");
  });
  app.get("/throw", () => {
    t.hit("throw");
    throw new Error("boom");
  });
  app.get("/hang", (req) => {
    t.hit("hang");
    t.begin(req.get("x-test-id"));
  });
  app.use((_err: unknown, _req: express.Request, res: express.Response, _next: express.NextFunction) => {
    res.status(500).json({ error: "boom" });
  });
  const server: Server = app.listen(0, "127.0.0.1");
  await once(server, "listening");
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    calls: t.calls,
    started: t.started,
    close: () => closeServer(server),
  };
}

async function fastifyApp(k: Knobs): Promise<App> {
  const t = tracker();
  const app = Fastify();
  const actual = new WeakMap<FastifyRequest, number>();
  const header = (r: FastifyRequest, name: string) => {
    const v = r.headers[name];
    return typeof v === "string" ? v : undefined;
  };
  await app.register(
    fastifyQuota({
      client: k.client,
      getKey: (request) => header(request, "x-api-key"),
      product: "mw-api",
      method: "things.list",
      estimatedSpendMicros: (request) => spendOf(header(request, "x-spend")),
      actualCost: (request) => actual.get(request),
      ...(k.skipOnError !== undefined ? { skipOnError: k.skipOnError } : {}),
      ...(k.standardHeaders !== undefined ? { standardHeaders: k.standardHeaders } : {}),
      ...(k.quotaHeaders !== undefined ? { quotaHeaders: k.quotaHeaders } : {}),
      ...(k.cancelOnError !== undefined ? { cancelOnError: k.cancelOnError } : {}),
      ...(k.customDenied
        ? { onDenied: async (d, request, reply) => void (header(request, "x-custom-denied") && (await reply.code(418).type("text/plain").send(deniedBody(d)))) }
        : {}),
      ...(k.errors ? { onError: (error, { phase }) => void k.errors!.push({ error, phase }) } : {}),
    }),
  );
  app.get("/ok", async (request) => {
    t.hit("ok");
    const q = request.quota;
    return { ok: true, remaining: String(q?.limits.find((l) => l.name === "monthly")?.remaining ?? "") };
  });
  app.get<{ Params: { n: string } }>("/cost/:n", async (request) => {
    t.hit("cost");
    actual.set(request, Number(request.params.n));
    return { ok: true };
  });
  app.get("/raw", (_request, reply) => {
    reply.raw.writeHead(200, { "content-type": "text/plain" });
    reply.raw.end("raw");
    return reply;
  });
  app.get("/throw", async () => {
    t.hit("throw");
    throw new Error("boom");
  });
  app.get("/hang", (request) => {
    t.hit("hang");
    t.begin(header(request, "x-test-id"));
    return new Promise(() => {});
  });
  await app.listen({ port: 0, host: "127.0.0.1" });
  return {
    url: `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`,
    calls: t.calls,
    started: t.started,
    close: async () => {
      app.server.closeAllConnections();
      await app.close();
    },
  };
}

async function honoApp(k: Knobs): Promise<App> {
  const t = tracker();
  const app = new Hono<{ Variables: QuotaEnv["Variables"] & { actualCost?: number } }>();
  app.use(
    honoQuota({
      client: k.client,
      getKey: (c) => c.req.header("x-api-key"),
      product: "mw-api",
      method: "things.list",
      estimatedSpendMicros: (c) => spendOf(c.req.header("x-spend")),
      actualCost: (c) => c.get("actualCost") as number | undefined,
      ...(k.skipOnError !== undefined ? { skipOnError: k.skipOnError } : {}),
      ...(k.standardHeaders !== undefined ? { standardHeaders: k.standardHeaders } : {}),
      ...(k.quotaHeaders !== undefined ? { quotaHeaders: k.quotaHeaders } : {}),
      ...(k.cancelOnError !== undefined ? { cancelOnError: k.cancelOnError } : {}),
      ...(k.customDenied ? { onDenied: (d, c) => (c.req.header("x-custom-denied") ? c.text(deniedBody(d), 418) : undefined) } : {}),
      ...(k.errors ? { onError: (error, { phase }) => void k.errors!.push({ error, phase }) } : {}),
    }),
  );
  app.get("/ok", (c) => {
    t.hit("ok");
    const q = c.get("quota");
    return c.json({ ok: true, remaining: String(q?.limits.find((l) => l.name === "monthly")?.remaining ?? "") });
  });
  app.get("/cost/:n", (c) => {
    t.hit("cost");
    c.set("actualCost", Number(c.req.param("n")));
    return c.json({ ok: true });
  });
  app.get("/raw", () => new Response("raw", { headers: { "content-type": "text/plain" } }));
  app.get("/throw", () => {
    t.hit("throw");
    throw new Error("boom");
  });
  app.get("/hang", async (c) => {
    t.hit("hang");
    t.begin(c.req.header("x-test-id"));
    await new Promise((r) => c.req.raw.signal.addEventListener("abort", r, { once: true }));
    return c.text("too late");
  });
  app.onError((_err, c) => c.json({ error: "boom" }, 500));
  const server = serve({ fetch: app.fetch, port: 0, hostname: "127.0.0.1" }) as Server;
  if (!server.listening) await once(server, "listening");
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    calls: t.calls,
    started: t.started,
    close: () => closeServer(server),
  };
}

async function closeServer(server: Server): Promise<void> {
  server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
}

const FRAMEWORKS = { express: expressApp, fastify: fastifyApp, hono: honoApp } as const;

let server: ServerProcess;
let admin: Clients;
let client: QuotaClient;

beforeAll(async () => {
  // A generous counter-store deadline: on a loaded CI machine the default 50 ms would turn slow Redis answers into
  // the plan's fail-closed UNAVAILABLE denials, which are not what these tests are about.
  server = await ServerProcess.create({ env: { QUOTA_STORE_DEADLINE_MS: "2000" } });
  await server.start();
  admin = clients("grpc-js", server.ports);
  await admin.admin.applyPlans({ document: PLANS }, ADMIN);
  client = createQuotaClient({ address: `127.0.0.1:${server.grpcPort}`, transport: "grpc", deadlineMs: 5000 });
});

afterAll(async () => {
  client?.close();
  admin?.close();
  await server?.cleanup();
});

/** used per limit name, from GetLimits. */
async function usage(apiKey: string): Promise<Record<string, bigint>> {
  const gl = await client.getLimits({ apiKey });
  return Object.fromEntries(gl.subscriptions.flatMap((s) => s.limits).map((l) => [l.name, l.used]));
}

/** Waits (bounded) until GetLimits shows `expected`; Release runs after the response, so it lands a moment later. */
async function eventually(apiKey: string, expected: Record<string, bigint>, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: Record<string, bigint> = {};
  while (Date.now() < deadline) {
    last = await usage(apiKey);
    if (Object.entries(expected).every(([k, v]) => last[k] === v)) return;
    await sleep(25);
  }
  expect(last, "usage after Release").toMatchObject(expected);
}

const get = (url: string, headers: Record<string, string> = {}, signal?: AbortSignal) => fetch(url, { headers, ...(signal ? { signal } : {}) });

for (const [name, make] of Object.entries(FRAMEWORKS)) {
  describe(name, () => {
    let app: App;
    const errors: Knobs["errors"] = [];

    beforeAll(async () => {
      app = await make({ client, customDenied: true, errors });
    });
    afterAll(async () => {
      await app?.close();
    });

    it("ALLOWED: the rate-limit headers are on the response, the handler sees the answer, Release COMMITs the actual cost and frees the slot", async () => {
      const s = await seedAccount(admin, "mw");
      const res = await get(`${app.url}/ok`, { "x-api-key": s.apiKey });
      expect(res.status).toBe(200);
      expect(await res.json()).toEqual({ ok: true, remaining: "4" });
      expect(res.headers.get("ratelimit-policy")).toContain('"monthly";q=5');
      expect(res.headers.get("ratelimit")).toContain('"monthly";r=4');
      expect(res.headers.get("x-unitslimit-quota-remaining")).toBe("4");
      expect(res.headers.get("x-unitslimit-quota-allocated")).toBe("5");
      expect(res.headers.get("retry-after")).toBeNull();
      await eventually(s.apiKey, { monthly: 1n, inflight: 0n });

      // COMMIT with the handler's actual cost (3 units for a call reserved at 1).
      const c = await get(`${app.url}/cost/3`, { "x-api-key": s.apiKey });
      expect(c.status).toBe(200);
      await eventually(s.apiKey, { monthly: 4n, inflight: 0n });
    });

    it("a handler that writes its own response (Express/Fastify: the raw ServerResponse, Hono: a new Response) still carries the headers", async () => {
      const s = await seedAccount(admin, "mw");
      const res = await get(`${app.url}/raw`, { "x-api-key": s.apiKey });
      expect(res.status).toBe(200);
      expect(await res.text()).toBe("raw");
      expect(res.headers.get("x-unitslimit-quota-remaining")).toBe("4");
      expect(res.headers.get("ratelimit-policy")).toContain('"monthly";q=5');
      await eventually(s.apiKey, { monthly: 1n, inflight: 0n });
    });

    it("429 QUOTA_EXHAUSTED with Retry-After after the quota; the handler does not run", async () => {
      const s = await seedAccount(admin, "mw");
      const before = app.calls.ok ?? 0;
      for (let i = 1; i <= 5; i++) {
        const r = await get(`${app.url}/ok`, { "x-api-key": s.apiKey });
        expect(r.status, `call ${i}`).toBe(200);
        await r.arrayBuffer();
        await eventually(s.apiKey, { monthly: BigInt(i), inflight: 0n });
      }
      const denied = await get(`${app.url}/ok`, { "x-api-key": s.apiKey });
      expect(denied.status).toBe(429);
      expect(denied.headers.get("content-type")).toContain("application/json");
      const body = (await denied.json()) as { error: string; reason: string; limit: string; retryAfterSeconds: number };
      expect(body).toMatchObject({ error: "quota exhausted", reason: "QUOTA_EXHAUSTED", limit: "monthly" });
      expect(Number(denied.headers.get("retry-after"))).toBeGreaterThan(0);
      expect(body.retryAfterSeconds).toBe(Number(denied.headers.get("retry-after")));
      expect(denied.headers.get("x-unitslimit-quota-remaining")).toBe("0");
      expect(denied.headers.get("ratelimit")).toContain('"monthly";r=0');
      expect(app.calls.ok! - before).toBe(5);
      await eventually(s.apiKey, { monthly: 5n, inflight: 0n });
    });

    it("a client abort CANCELs: while the request hangs a second one is CONCURRENCY_LIMITED (429); after the abort the slot and the quota are back", async () => {
      const s = await seedAccount(admin, "mw");
      const id = `abort-${name}-${Math.random()}`;
      const ac = new AbortController();
      const hanging = get(`${app.url}/hang`, { "x-api-key": s.apiKey, "x-test-id": id }, ac.signal).catch((e: unknown) => e);
      await app.started(id);
      await eventually(s.apiKey, { monthly: 1n, inflight: 1n });

      const busy = await get(`${app.url}/ok`, { "x-api-key": s.apiKey });
      expect(busy.status).toBe(429);
      expect(await busy.json()).toMatchObject({ reason: "CONCURRENCY_LIMITED", limit: "inflight" });

      ac.abort();
      expect(await hanging).toBeInstanceOf(Error);
      await eventually(s.apiKey, { monthly: 0n, inflight: 0n });
      const after = await get(`${app.url}/ok`, { "x-api-key": s.apiKey });
      expect(after.status).toBe(200);
      await after.arrayBuffer();
    });

    it("a client that goes away while CheckAndReserve is in flight: the reservation is CANCELled, not left to expire", async () => {
      const s = await seedAccount(admin, "mw");
      let reserved!: () => void;
      let gone!: () => void;
      const isReserved = new Promise<void>((r) => (reserved = r));
      const isGone = new Promise<void>((r) => (gone = r));
      // The real client, but its answer is held back until the caller has disconnected.
      const slow: QuotaClient = {
        ...client,
        checkAndReserve: async (req, o) => {
          const answer = await client.checkAndReserve(req, o);
          reserved();
          await isGone;
          await sleep(200);
          return answer;
        },
      };
      const a = await make({ client: slow });
      try {
        const ac = new AbortController();
        const pending = get(`${a.url}/ok`, { "x-api-key": s.apiKey }, ac.signal).catch((e: unknown) => e);
        await isReserved;
        await eventually(s.apiKey, { monthly: 1n, inflight: 1n });
        ac.abort();
        gone();
        expect(await pending).toBeInstanceOf(Error);
        await eventually(s.apiKey, { monthly: 0n, inflight: 0n });
      } finally {
        await a.close();
      }
    });

    it("a thrown handler answers 500 and CANCELs (refunded, slot freed)", async () => {
      const s = await seedAccount(admin, "mw");
      const before = app.calls.throw ?? 0;
      const res = await get(`${app.url}/throw`, { "x-api-key": s.apiKey });
      expect(res.status).toBe(500);
      await res.arrayBuffer();
      expect(app.calls.throw! - before).toBe(1);
      await eventually(s.apiKey, { monthly: 0n, inflight: 0n });
    });

    it("402 BUDGET_EXHAUSTED after the credit budget", async () => {
      const s = await seedAccount(admin, "mw-credit");
      await deposit(admin, s.accountId, "credit", 10n);
      // $6 reserved and committed (no actual spend given: the reserved estimate is charged).
      const first = await get(`${app.url}/ok`, { "x-api-key": s.apiKey, "x-spend": "6000000" });
      expect(first.status).toBe(200);
      await first.arrayBuffer();
      await eventually(s.apiKey, { credit: 6_000_000n });
      const broke = await get(`${app.url}/ok`, { "x-api-key": s.apiKey, "x-spend": "6000000" });
      expect(broke.status).toBe(402);
      expect(await broke.json()).toMatchObject({ error: "credit budget exhausted", reason: "BUDGET_EXHAUSTED", limit: "credit" });
      // A cheaper call still fits in the $4 left.
      const small = await get(`${app.url}/ok`, { "x-api-key": s.apiKey, "x-spend": "1000000" });
      expect(small.status).toBe(200);
      await small.arrayBuffer();
    });

    it("no key: 401 KEY_MISSING without calling the service; a wrong key: 401 KEY_INVALID", async () => {
      const none = await get(`${app.url}/ok`);
      expect(none.status).toBe(401);
      expect(await none.json()).toEqual({ error: "missing API key", reason: "KEY_MISSING" });
      const wrong = await get(`${app.url}/ok`, { "x-api-key": "qa_aaaaaaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb" });
      expect(wrong.status).toBe(401);
      expect(await wrong.json()).toMatchObject({ reason: "KEY_INVALID" });
    });

    it("onDenied replaces the response when it sends one, and falls through to the default when it does not", async () => {
      const s = await seedAccount(admin, "mw");
      const id = `custom-${name}-${Math.random()}`;
      const ac = new AbortController();
      const hanging = get(`${app.url}/hang`, { "x-api-key": s.apiKey, "x-test-id": id }, ac.signal).catch((e: unknown) => e);
      await app.started(id);
      const custom = await get(`${app.url}/ok`, { "x-api-key": s.apiKey, "x-custom-denied": "1" });
      expect(custom.status).toBe(418);
      expect(await custom.text()).toBe("custom: CONCURRENCY_LIMITED 429");
      const plain = await get(`${app.url}/ok`, { "x-api-key": s.apiKey });
      expect(plain.status).toBe(429);
      await plain.arrayBuffer();
      ac.abort();
      await hanging;
      await eventually(s.apiKey, { inflight: 0n });
      expect(errors, "a denial is not an error").toEqual([]);
    });

    it("standardHeaders: false and quotaHeaders: false leave the answer's headers off (Retry-After stays on denials); cancelOnError: false COMMITs a thrown handler", async () => {
      const quiet = await make({ client, standardHeaders: false, quotaHeaders: false, cancelOnError: false });
      try {
        const s = await seedAccount(admin, "mw");
        const ok = await get(`${quiet.url}/ok`, { "x-api-key": s.apiKey });
        expect(ok.status).toBe(200);
        await ok.arrayBuffer();
        for (const h of ["ratelimit-policy", "ratelimit", "x-unitslimit-quota-remaining", "x-unitslimit-quota-used"]) expect(ok.headers.get(h), h).toBeNull();
        await eventually(s.apiKey, { monthly: 1n, inflight: 0n });

        const threw = await get(`${quiet.url}/throw`, { "x-api-key": s.apiKey });
        expect(threw.status).toBe(500);
        await threw.arrayBuffer();
        await eventually(s.apiKey, { monthly: 2n, inflight: 0n });

        for (let i = 3; i <= 5; i++) {
          const r = await get(`${quiet.url}/ok`, { "x-api-key": s.apiKey });
          await r.arrayBuffer();
          await eventually(s.apiKey, { monthly: BigInt(i), inflight: 0n });
        }
        const denied = await get(`${quiet.url}/ok`, { "x-api-key": s.apiKey });
        expect(denied.status).toBe(429);
        await denied.arrayBuffer();
        expect(Number(denied.headers.get("retry-after"))).toBeGreaterThan(0);
        expect(denied.headers.get("ratelimit")).toBeNull();
        expect(denied.headers.get("x-unitslimit-quota-remaining")).toBeNull();
      } finally {
        await quiet.close();
      }
    });

    it("quota service unreachable: skipOnError true runs the handler (fail open), false answers 503; onError is told either way", async () => {
      const down = createQuotaClient({ address: `127.0.0.1:${await freePort()}`, transport: "grpc", failureMode: "closed" });
      const openErrors: NonNullable<Knobs["errors"]> = [];
      const closedErrors: NonNullable<Knobs["errors"]> = [];
      const open = await make({ client: down, skipOnError: true, errors: openErrors });
      const closed = await make({ client: down, skipOnError: false, errors: closedErrors });
      try {
        const a = await get(`${open.url}/ok`, { "x-api-key": "qa_x_y" });
        expect(a.status).toBe(200);
        expect(await a.json()).toEqual({ ok: true, remaining: "" });
        expect(open.calls.ok).toBe(1);
        expect(openErrors.map((e) => [e.phase, e.error instanceof QuotaUnavailableError, (e.error as QuotaUnavailableError).kind])).toEqual([["check", true, "unreachable"]]);

        const d = await get(`${closed.url}/ok`, { "x-api-key": "qa_x_y" });
        expect(d.status).toBe(503);
        expect(await d.json()).toEqual({ error: "quota service unavailable", reason: "UNAVAILABLE" });
        expect(closed.calls.ok).toBeUndefined();
        expect(closedErrors.map((e) => [e.phase, e.error instanceof QuotaUnavailableError])).toEqual([["check", true]]);
      } finally {
        await open.close();
        await closed.close();
        down.close();
      }
    });

    it("without skipOnError the client's failureMode decides", async () => {
      const downOpen = createQuotaClient({ address: `127.0.0.1:${await freePort()}`, failureMode: "open" });
      const a = await make({ client: downOpen });
      try {
        const r = await get(`${a.url}/ok`, { "x-api-key": "qa_x_y" });
        expect(r.status).toBe(200);
        await r.arrayBuffer();
      } finally {
        await a.close();
        downOpen.close();
      }
    });
  });
}
