/**
 * The real server process (`node src/cli/main.ts serve`) with real Postgres and Redis, called the way users call it:
 * grpc-js, Connect (HTTP/1.1 JSON), gRPC-Web and gRPC over h2c; grpc.health.v1 and server reflection (`buf curl`);
 * a plain HTTP/1.1 JSON POST (what curl sends); and a graceful SIGTERM that exits 0.
 */
import { execFile } from "node:child_process";
import * as http from "node:http";
import { promisify } from "node:util";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { status } from "@grpc/grpc-js";
import { Decision, DenyReason, LimitKind, Scope } from "../../src/gen/quota/v1/types_pb.ts";
import { Outcome, ReleaseState } from "../../src/gen/quota/v1/quota_pb.ts";
import { ADMIN, clients, codeOf, type Clients, type Protocol } from "../support/clients.ts";
import { uniqueId } from "../support/env.ts";
import { REPO_ROOT, ServerProcess, healthCheck } from "../support/server-process.ts";

const run = promisify(execFile);

const PLANS = `
plans:
  - id: e2e
    name: E2E (10 units a month)
    products: [e2e-api]
    methods: { default: 1, costs: { things.search: 3 } }
    limits:
      - { name: monthly, kind: quota, scope: subscription, limit: 10, period: monthly }
      - { name: rps, kind: rate, scope: key, limit: 50, window: 1s }
    topUp: { limit: monthly, increment: 5, price: { units: 5, amount: "0.50" } }
`;

const PROTOCOLS: Protocol[] = ["grpc-js", "connect", "grpc-web", "grpc"];

/** Seeds through the admin API of `c`: account, subscription to plan e2e, owner key, $5.00 in the prepaid wallet. */
async function seed(c: Clients, label: string) {
  const accountId = uniqueId(`e2e-${label}-`).toLowerCase().replace(/[^a-z0-9_-]/g, "-").slice(0, 64);
  const account = await c.admin.createAccount({ id: accountId, name: `e2e ${label}` }, ADMIN);
  expect(account.account?.id).toBe(accountId);
  const sub = await c.admin.createSubscription({ accountId, planId: "e2e" }, ADMIN);
  expect(sub.subscription).toMatchObject({ accountId, planId: "e2e", status: "active" });
  const key = await c.admin.createApiKey({ accountId, subscriptionId: sub.subscription!.id, name: `e2e ${label}`, owner: true }, ADMIN);
  expect(key.apiKey).toMatch(/^qa_[a-z2-7]{16}_[A-Za-z0-9_-]{43}$/);
  expect(key.key).toMatchObject({ subscriptionId: sub.subscription!.id, status: "active", owner: true });
  const dep = await c.admin.deposit(
    { accountId, wallet: "prepaid", payment: { reference: uniqueId(`pay-${label}-`), amount: { currencyCode: "USD", units: 5n, nanos: 0 }, provider: "test" } },
    ADMIN,
  );
  expect(dep.replayed).toBe(false);
  expect(dep.balance).toMatchObject({ currencyCode: "USD", units: 5n, nanos: 0 });
  return { accountId, subscriptionId: sub.subscription!.id, apiKey: key.apiKey, keyId: key.key!.id };
}

describe("the real server process (node src/cli/main.ts serve, Postgres, Redis)", () => {
  let server: ServerProcess;

  beforeAll(async () => {
    // A grace far longer than the SIGTERM test's own timeout: an exit within that test proves the drain finished by
    // itself (an idle keep-alive connection holding it up would only be cut at the grace).
    server = await ServerProcess.create({ env: { QUOTA_SHUTDOWN_GRACE_MS: "120000", QUOTA_SHUTDOWN_DELAY_MS: "0" } });
    await server.start();
    const c = clients("grpc-js", server.ports);
    try {
      const applied = await c.admin.applyPlans({ document: PLANS }, ADMIN);
      expect(applied.plans.map((p) => p.id)).toEqual(["e2e"]);
    } finally {
      c.close();
    }
  });

  // The SIGTERM test stops the server; whichever test runs next (any order) gets it running again.
  beforeEach(async () => {
    if (!server.running) await server.start();
  });
  afterAll(async () => {
    await server?.cleanup();
  });

  for (const protocol of PROTOCOLS) {
    it(`${protocol}: admin seeding, CheckAndReserve, Release (and its replay), TopUp, GetLimits, then QUOTA_EXHAUSTED`, async () => {
      const c = clients(protocol, server.ports);
      try {
        // The admin API answers over this protocol too (ApplyPlans replaces the plan with itself).
        const applied = await c.admin.applyPlans({ document: PLANS }, ADMIN);
        expect(applied.plans[0]).toMatchObject({ id: "e2e", name: "E2E (10 units a month)" });
        const s = await seed(c, protocol);

        // CheckAndReserve: a weighted method (3 units).
        const a = await c.quota.checkAndReserve({ apiKey: s.apiKey, product: "e2e-api", method: "things.search" });
        expect(a.decision).toBe(Decision.ALLOWED);
        expect(a.reason).toBe(DenyReason.DENY_REASON_UNSPECIFIED);
        expect(a.reservationId.startsWith(`r~${s.accountId}~`)).toBe(true);
        expect(a.cost).toBe(3n);
        expect(a.replayed).toBe(false);
        expect(a.overage).toBe(false);
        expect(a.failOpen).toBe(false);
        const monthly = a.limits.find((l) => l.name === "monthly");
        expect(monthly).toMatchObject({ kind: LimitKind.QUOTA, scope: Scope.SUBSCRIPTION, limit: 10n, used: 3n, remaining: 7n, exceeded: false });
        const rps = a.limits.find((l) => l.name === "rps");
        expect(rps).toMatchObject({ kind: LimitKind.RATE, scope: Scope.KEY, limit: 50n, used: 1n, remaining: 49n });
        expect(a.headers["RateLimit-Policy"]).toContain('"monthly";q=10');
        expect(a.headers["RateLimit-Policy"]).toContain('"rps";q=50;w=1');
        expect(a.headers["RateLimit"]).toContain('"monthly";r=7');
        expect(a.headers["X-UnitsLimit-Quota-Allocated"]).toBe("10");
        expect(a.headers["X-UnitsLimit-Quota-Used"]).toBe("3");
        expect(a.headers["X-UnitsLimit-Quota-Remaining"]).toBe("7");
        expect(a.headers["X-UnitsLimit-Quota-Overage"]).toBe("disabled");
        expect(a.headers["Retry-After"]).toBeUndefined();

        // Release with a lower actual cost; the second Release replays the first settlement.
        const r1 = await c.quota.release({ reservationId: a.reservationId, outcome: Outcome.COMMIT, actualCost: 2n });
        expect(r1).toMatchObject({ state: ReleaseState.COMMITTED, chargedCost: 2n, refundedCost: 1n, replayed: false });
        const r2 = await c.quota.release({ reservationId: a.reservationId, outcome: Outcome.COMMIT, actualCost: 2n });
        expect(r2).toMatchObject({ state: ReleaseState.COMMITTED, chargedCost: 2n, refundedCost: 1n, replayed: true });

        // TopUp from the wallet: 5 units at $0.50.
        const tu = await c.quota.topUp({
          apiKey: s.apiKey,
          idempotencyKey: `e2e-${protocol}-topup-1`,
          target: { case: "quota", value: { lines: [{ units: 5n }] } },
          funding: { case: "fromWallet", value: {} },
        });
        expect(tu.replayed).toBe(false);
        expect(tu.transactionId).toMatch(/^tx_/);
        expect.soft(tu.newLimit, "TopUp new_limit: plan base 10 + the 5 units just bought").toBe(15n);
        expect(tu.newBalance).toMatchObject({ currencyCode: "USD", units: 4n, nanos: 500_000_000 });
        expect(tu.grants).toHaveLength(1);
        expect(tu.grants[0]).toMatchObject({ subscriptionId: s.subscriptionId, limit: "monthly", amount: 5n, source: "topup" });

        // GetLimits reflects every call so far: used 2 (3 reserved, 2 charged), limit 10 + 5, wallet $4.50.
        const gl = await c.quota.getLimits({ apiKey: s.apiKey });
        expect(gl.accountId).toBe(s.accountId);
        expect(gl.keyId).toBe(s.keyId);
        expect(gl.subscriptions).toHaveLength(1);
        expect(gl.subscriptions[0]).toMatchObject({ id: s.subscriptionId, planId: "e2e", planName: "E2E (10 units a month)", status: "active" });
        const m = gl.subscriptions[0]!.limits.find((l) => l.name === "monthly")!;
        expect(m).toMatchObject({ limit: 15n, used: 2n, remaining: 13n });
        expect(m.sources.map((x) => [x.kind, x.amount])).toEqual(expect.arrayContaining([["plan", 10n], ["grant", 5n]]));
        const prepaid = gl.wallets.find((w) => w.kind === "prepaid")!;
        expect(prepaid.balance).toMatchObject({ units: 4n, nanos: 500_000_000 });
        expect(prepaid.totalDeposited).toMatchObject({ units: 5n, nanos: 0 });
        expect(gl.grants.map((g) => g.amount)).toEqual([5n]);
        expect(gl.keys.map((k) => k.id)).toEqual([s.keyId]);
        // The same account seen by account id.
        const byAccount = await c.quota.getLimits({ accountId: s.accountId });
        expect(byAccount.subscriptions[0]!.limits.find((l) => l.name === "monthly")).toMatchObject({ limit: 15n, used: 2n, remaining: 13n });

        // Exhaust the quota (the README flow): 13 more one-unit calls are admitted, the next is QUOTA_EXHAUSTED.
        for (let i = 1; i <= 13; i++) {
          const x = await c.quota.checkAndReserve({ apiKey: s.apiKey, product: "e2e-api", method: "things.list" });
          expect(x.decision, `call ${i}`).toBe(Decision.ALLOWED);
          expect(x.headers["X-UnitsLimit-Quota-Remaining"], `call ${i}`).toBe(String(13 - i));
        }
        const denied = await c.quota.checkAndReserve({ apiKey: s.apiKey, product: "e2e-api", method: "things.list" });
        expect(denied.decision).toBe(Decision.DENIED);
        expect(denied.reason).toBe(DenyReason.QUOTA_EXHAUSTED);
        expect(denied.reservationId).toBe("");
        expect(denied.deniedLimit).toBe("monthly");
        expect(denied.limits.find((l) => l.name === "monthly")).toMatchObject({ limit: 15n, used: 15n, remaining: 0n, exceeded: true });
        expect(denied.headers["X-UnitsLimit-Quota-Remaining"]).toBe("0");
        expect(denied.headers["X-UnitsLimit-Quota-Used"]).toBe("15");
        expect(denied.headers["X-UnitsLimit-Quota-Allocated"]).toBe("15");
        expect(denied.headers["RateLimit-Policy"]).toContain('"monthly";q=15');
        expect(denied.headers["RateLimit"]).toContain('"monthly";r=0');
        // The quota resets at the end of the cycle: the wait is announced (README: retryAfter + Retry-After).
        expect(Number(denied.headers["Retry-After"])).toBeGreaterThan(0);
        expect(denied.retryAfter?.seconds).toBeGreaterThan(0n);

        const after = await c.quota.getLimits({ apiKey: s.apiKey });
        expect(after.subscriptions[0]!.limits.find((l) => l.name === "monthly")).toMatchObject({ limit: 15n, used: 15n, remaining: 0n });

        // The ledger: the deposit and the purchase, newest first, each balanced.
        const ledger = await c.admin.listLedger({ accountId: s.accountId }, ADMIN);
        expect(ledger.transactions.map((t) => t.type)).toEqual(["quota_purchase", "deposit"]);
        for (const t of ledger.transactions) expect(t.postings.reduce((sum, p) => sum + p.amountMicros, 0n)).toBe(0n);
      } finally {
        c.close();
      }
    });
  }

  it("grpc.health.v1 Check answers SERVING on the gRPC port, and server reflection lists and calls quota.v1", async () => {
    const address = `127.0.0.1:${server.grpcPort}`;
    expect(await healthCheck(address)).toBe("SERVING");
    expect(await healthCheck(address, "quota.v1.QuotaService")).toBe("SERVING");
    expect(await healthCheck(address, "quota.v1.QuotaAdminService")).toBe("SERVING");
    const unknown = await healthCheck(address, "no.such.Service").then(() => undefined, (e: unknown) => e);
    expect(codeOf(unknown)).toBe(status.NOT_FOUND);

    const buf = `${REPO_ROOT}node_modules/.bin/buf`;
    const base = `http://127.0.0.1:${server.grpcPort}`;
    const list = await run(buf, ["curl", "--list-services", "--protocol", "grpc", "--http2-prior-knowledge", base], { timeout: 20_000, cwd: REPO_ROOT });
    const services = list.stdout.split("\n").map((l) => l.trim()).filter(Boolean);
    expect(services).toContain("quota.v1.QuotaService");
    expect(services).toContain("quota.v1.QuotaAdminService");

    // The README's `buf curl` call: reflection alone (no proto files) is enough to call an RPC.
    const c = clients("grpc-js", server.ports);
    try {
      const s = await seed(c, "buf-curl");
      const call = await run(
        buf,
        ["curl", "--protocol", "grpc", "--http2-prior-knowledge", "-d", JSON.stringify({ api_key: s.apiKey }), `${base}/quota.v1.QuotaService/GetLimits`],
        { timeout: 20_000, cwd: REPO_ROOT },
      );
      const body = JSON.parse(call.stdout) as { accountId: string; keyId: string };
      expect(body.accountId).toBe(s.accountId);
      expect(body.keyId).toBe(s.keyId);
    } finally {
      c.close();
    }
  });

  it("a plain HTTP/1.1 POST of Connect JSON (what curl sends) checks, releases, tops up, reads limits and names bad fields", async () => {
    const c = clients("grpc-js", server.ports);
    let s: Awaited<ReturnType<typeof seed>>;
    try {
      s = await seed(c, "fetch");
    } finally {
      c.close();
    }
    const post = async (method: string, body: unknown) => {
      const res = await fetch(`http://127.0.0.1:${server.httpPort}/quota.v1.QuotaService/${method}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      return { status: res.status, contentType: res.headers.get("content-type"), json: (await res.json()) as Record<string, any> };
    };

    const check = await post("CheckAndReserve", { apiKey: s.apiKey, product: "e2e-api", method: "things.list" });
    expect(check.status).toBe(200);
    expect(check.contentType).toMatch(/^application\/json/);
    expect(check.json.decision).toBe("ALLOWED");
    expect(check.json.reservationId).toMatch(new RegExp(`^r~${s.accountId}~`));
    expect(check.json.cost).toBe("1");
    expect(check.json.headers["RateLimit-Policy"]).toContain('"monthly";q=10');
    expect(check.json.headers["X-UnitsLimit-Quota-Remaining"]).toBe("9");
    expect(check.json.limits.find((l: { name: string }) => l.name === "monthly")).toMatchObject({ kind: "QUOTA", scope: "SUBSCRIPTION", limit: "10", used: "1", remaining: "9" });

    const release = await post("Release", { reservationId: check.json.reservationId, actualCost: "1" });
    expect(release.status).toBe(200);
    expect(release.json).toMatchObject({ state: "COMMITTED", chargedCost: "1" });

    const topUp = await post("TopUp", { apiKey: s.apiKey, idempotencyKey: "fetch-topup-1", quota: { lines: [{ units: "5" }] }, fromWallet: {} });
    expect(topUp.status).toBe(200);
    expect.soft(topUp.json.newLimit, "TopUp new_limit: plan base 10 + the 5 units just bought").toBe("15");
    expect(topUp.json.newBalance).toMatchObject({ currencyCode: "USD", units: "4", nanos: 500_000_000 });

    const limits = await post("GetLimits", { apiKey: s.apiKey });
    expect(limits.status).toBe(200);
    expect(limits.json.subscriptions[0].limits.find((l: { name: string }) => l.name === "monthly")).toMatchObject({ limit: "15", used: "1", remaining: "14" });

    // Bad input: HTTP 400 with the Connect error body naming the field.
    const bad = await post("CheckAndReserve", { apiKey: s.apiKey, product: "", method: "things.list" });
    expect(bad.status).toBe(400);
    expect(bad.json.code).toBe("invalid_argument");
    expect(bad.json.message).toContain("product");
    // Unknown JSON fields are rejected, not ignored (a typo must not silently change the meaning).
    const typo = await post("CheckAndReserve", { apiKey: s.apiKey, product: "e2e-api", methd: "things.list" });
    expect(typo.status).toBe(400);
    expect(typo.json.code).toBe("invalid_argument");
  });

  it("SIGTERM drains and exits 0 promptly, logging the shutdown, with no internal error logged during the run", async () => {
    expect(server.running).toBe(true);
    // An idle HTTP/1.1 keep-alive connection (a dashboard between two polls) must not hold up the shutdown.
    const agent = new http.Agent({ keepAlive: true });
    await new Promise<void>((resolve, reject) => {
      http
        .get({ host: "127.0.0.1", port: server.httpPort, path: "/healthz", agent }, (res) => {
          res.resume();
          res.on("end", () => resolve());
        })
        .on("error", reject);
    });
    // stop() waits at most 20 s for the exit and then fails; the grace is 120 s: exiting at all means the idle
    // connection did not hold the shutdown up (no timing assertion needed: the order of events says it).
    const exit = await server.stop(20_000);
    agent.destroy();
    expect(exit, server.output()).toEqual({ code: 0, signal: null });
    const messages = server.logs().map((l) => l.msg);
    expect(messages).toContain("serving");
    expect(messages).toContain("signal received");
    expect(messages).toContain("stopped");
    const errors = server.logs().filter((l) => typeof l.level === "number" && l.level >= 50);
    expect(errors, JSON.stringify(errors)).toEqual([]);
    expect(await server.ready()).toBe(false);
  });
});
