/**
 * Security: data-plane service token and mTLS, the admin credential, browsers (CORS allow-list, GetLimits and
 * wallet-funded TopUp only, for the presented key), tenant isolation, hashed secrets never logged, message size
 * limits, admin rate limits, loopback by default.
 */
import { createHash } from "node:crypto";
import * as https from "node:https";
import { Writable } from "node:stream";
import * as grpc from "@grpc/grpc-js";
import pg from "pg";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config/config.ts";
import { Decision } from "../../src/gen/quota/v1/types_pb.ts";
import { startTestApp, type TestApp } from "../support/app.ts";
import { clients, codeOf, type Clients } from "../support/clients.ts";
import { uniqueId } from "../support/env.ts";
import { makePki } from "../support/tls.ts";

const PLANS = `
plans:
  - id: sec
    name: security plan
    limits: [{ name: monthly, kind: quota, limit: 1000, period: monthly }]
    topUp: { limit: monthly, increment: 100, price: { units: 100, amount: "1.00" } }
`;
const SVC = { authorization: "Bearer svc-token" };
const ADMIN = { authorization: "Bearer admin-token-0123456789" };
const ORIGIN = "https://dash.example";

async function seed(c: Clients) {
  const id = uniqueId("sec").toLowerCase();
  await c.admin.createAccount({ id, name: id }, ADMIN);
  const sub = await c.admin.createSubscription({ accountId: id, planId: "sec" }, ADMIN);
  const key = await c.admin.createApiKey({ accountId: id, subscriptionId: sub.subscription!.id, name: "k", owner: false }, ADMIN);
  await c.admin.deposit({ accountId: id, wallet: "prepaid", payment: { reference: uniqueId("ref"), amount: { units: 10n }, provider: "test" } }, ADMIN);
  return { accountId: id, subscriptionId: sub.subscription!.id, apiKey: key.apiKey, keyId: key.key!.id };
}

/** An HTTP/1.1 request as a browser would send it (fetch in Node lets us set Origin). */
async function browser(port: number, path: string, body: unknown, origin = ORIGIN, method = "POST") {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, {
    method,
    headers: method === "OPTIONS"
      ? { origin, "access-control-request-method": "POST", "access-control-request-headers": "content-type" }
      : { origin, "content-type": "application/json" },
    ...(method === "POST" ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(text) as Record<string, unknown>;
  } catch {
    json = { text };
  }
  return { status: res.status, headers: res.headers, json };
}

describe("security", () => {
  let t: TestApp;
  let logs = "";
  const grpcJs = () => clients("grpc-js", { grpc: t.app.grpcPort, http: t.app.httpPort });
  const connect = () => clients("connect", { grpc: t.app.grpcPort, http: t.app.httpPort });
  let c: Clients;
  beforeAll(async () => {
    const sink = new Writable({
      write(chunk, _enc, cb) {
        logs += chunk.toString();
        cb();
      },
    });
    t = await startTestApp({
      clock: false,
      logger: pino({ level: "trace" }, sink),
      env: { QUOTA_SERVICE_TOKEN: "svc-token", QUOTA_ADMIN_TOKEN: "admin-token-0123456789", QUOTA_ALLOWED_ORIGINS: ORIGIN, QUOTA_MAX_MESSAGE_BYTES: "65536", QUOTA_ADMIN_RATE_PER_MINUTE: "1000" },
    });
    c = grpcJs();
    await c.admin.applyPlans({ document: PLANS }, ADMIN);
  });
  afterAll(async () => {
    c?.close();
    await t?.stop();
  });

  it("refuses data-plane calls without the service token (UNAUTHENTICATED) on both ports", async () => {
    const s = await seed(c);
    for (const cl of [c, connect()]) {
      const req = { apiKey: s.apiKey, product: "api", method: "get" };
      expect(codeOf(await cl.quota.checkAndReserve(req).catch((e) => e))).toBe(grpc.status.UNAUTHENTICATED);
      expect(codeOf(await cl.quota.checkAndReserve(req, { authorization: "Bearer wrong" }).catch((e) => e))).toBe(grpc.status.UNAUTHENTICATED);
      expect(codeOf(await cl.quota.checkAndReserve(req, { authorization: "svc-token" }).catch((e) => e))).toBe(grpc.status.UNAUTHENTICATED);
      expect((await cl.quota.checkAndReserve(req, SVC)).decision).toBe(Decision.ALLOWED);
    }
  });

  it("requires the admin credential for the admin service; the service token is PERMISSION_DENIED there", async () => {
    for (const cl of [c, connect()]) {
      expect(codeOf(await cl.admin.listPlans({}).catch((e) => e))).toBe(grpc.status.UNAUTHENTICATED);
      expect(codeOf(await cl.admin.listPlans({}, { authorization: "Bearer nope" }).catch((e) => e))).toBe(grpc.status.UNAUTHENTICATED);
      expect(codeOf(await cl.admin.listPlans({}, SVC).catch((e) => e))).toBe(grpc.status.PERMISSION_DENIED);
      expect((await cl.admin.listPlans({}, ADMIN)).plans.length).toBeGreaterThan(0);
    }
  });

  it("lets allow-listed browser origins call GetLimits and wallet-funded TopUp for the presented key only", async () => {
    const s = await seed(c);
    const other = await seed(c);
    const port = t.app.httpPort;
    const pre = await browser(port, "/quota.v1.QuotaService/GetLimits", undefined, ORIGIN, "OPTIONS");
    expect(pre.status).toBe(204);
    expect(pre.headers.get("access-control-allow-origin")).toBe(ORIGIN);
    expect((await browser(port, "/quota.v1.QuotaService/CheckAndReserve", undefined, ORIGIN, "OPTIONS")).status).toBe(403);
    expect((await browser(port, "/quota.v1.QuotaService/GetLimits", undefined, "https://evil.example", "OPTIONS")).status).toBe(403);

    const limits = await browser(port, "/quota.v1.QuotaService/GetLimits", { apiKey: s.apiKey });
    expect(limits.status).toBe(200);
    expect(limits.headers.get("access-control-allow-origin")).toBe(ORIGIN);
    expect(limits.json.accountId).toBe(s.accountId);
    expect((limits.json.keys as unknown[]).length).toBe(1);

    const bought = await browser(port, "/quota.v1.QuotaService/TopUp", { apiKey: s.apiKey, idempotencyKey: "b1", quota: { lines: [{ units: "100" }] }, fromWallet: {} });
    expect(bought.status).toBe(200);
    expect(bought.json.newLimit).toBe("1100");

    const denied = [
      await browser(port, "/quota.v1.QuotaService/CheckAndReserve", { apiKey: s.apiKey, product: "api", method: "get" }),
      await browser(port, "/quota.v1.QuotaService/GetLimits", { accountId: other.accountId }),
      await browser(port, "/quota.v1.QuotaService/TopUp", { accountId: s.accountId, idempotencyKey: "b2", quota: { lines: [{ units: "100" }] }, fromWallet: {} }),
      await browser(port, "/quota.v1.QuotaService/TopUp", { apiKey: s.apiKey, idempotencyKey: "b3", wallet: { amount: { units: "5" } }, external: { reference: "x", amount: { units: "5" } } }),
      await browser(port, "/quota.v1.QuotaAdminService/ListPlans", {}),
      await browser(port, "/quota.v1.QuotaService/GetLimits", { apiKey: s.apiKey }, "https://evil.example"),
    ];
    for (const d of denied) expect(d.json.code, JSON.stringify(d.json)).toBe("permission_denied");
  });

  it("isolates tenants: a key reads and spends only its own account", async () => {
    const a = await seed(c);
    const b = await seed(c);
    const viewA = await c.quota.getLimits({ apiKey: a.apiKey }, SVC);
    expect(viewA.accountId).toBe(a.accountId);
    expect(viewA.keys.map((k) => k.id)).toEqual([a.keyId]);
    const crossTopUp = await c.quota
      .topUp({ apiKey: a.apiKey, subscriptionId: b.subscriptionId, idempotencyKey: "x1", target: { case: "quota", value: { lines: [{ units: 100n }] } }, funding: { case: "fromWallet", value: {} } }, SVC)
      .catch((e) => e);
    expect(codeOf(crossTopUp)).toBe(grpc.status.PERMISSION_DENIED);
    const both = await c.quota.getLimits({ apiKey: a.apiKey, accountId: b.accountId }, SVC).catch((e) => e);
    expect(codeOf(both)).toBe(grpc.status.INVALID_ARGUMENT);
    // A's secret with B's key id is not a valid key.
    const forged = `qa_${b.keyId}_${a.apiKey.split("_").slice(2).join("_")}`;
    const r = await c.quota.checkAndReserve({ apiKey: forged, product: "api", method: "get" }, SVC);
    expect(r.decision).toBe(Decision.DENIED);
    const viewB = await c.quota.getLimits({ apiKey: b.apiKey }, SVC);
    expect(viewB.wallets.find((w) => w.kind === "prepaid")!.balance!.units).toBe(10n);
    expect(viewB.subscriptions[0]!.limits[0]!.used).toBe(0n);
  });

  it("stores only a SHA-256 of each secret and never logs secrets or tokens", async () => {
    const s = await seed(c);
    const secret = s.apiKey.split("_").slice(2).join("_");
    await c.quota.checkAndReserve({ apiKey: s.apiKey, product: "api", method: "get" }, SVC);
    await c.quota.checkAndReserve({ apiKey: `${s.apiKey}x`, product: "api", method: "get" }, SVC);
    await c.quota.checkAndReserve({ apiKey: s.apiKey, product: "Bad Product", method: "get" }, SVC).catch(() => {});
    await connect().quota.getLimits({ apiKey: s.apiKey }, SVC);
    const db = new pg.Client({ connectionString: t.databaseUrl });
    await db.connect();
    const row = (await db.query("select * from api_keys where id = $1", [s.keyId])).rows[0] as Record<string, unknown>;
    const dump = (await db.query("select string_agg(t::text, ' ') as all from (select * from api_keys union all select * from api_keys where false) t")).rows[0] as { all: string };
    await db.end();
    expect(row.secret_hash).toBe(createHash("sha256").update(secret).digest("hex"));
    expect(dump.all).not.toContain(secret);
    // The run was logged call by call (debug access log), and none of it carries a secret.
    expect(logs).toMatch(/"method":"CheckAndReserve","code":"OK"/);
    expect(logs).toMatch(/"method":"GetLimits","code":"OK"/);
    expect(logs).not.toContain(secret);
    expect(logs).not.toContain("svc-token");
    expect(logs).not.toContain("admin-token-0123456789");
  });

  it("rejects oversized messages with RESOURCE_EXHAUSTED on both ports", async () => {
    const huge = "x".repeat(200_000);
    for (const cl of [c, connect()]) {
      const err = await cl.quota.checkAndReserve({ apiKey: huge, product: "api", method: "get" }, SVC).catch((e) => e);
      expect(codeOf(err)).toBe(grpc.status.RESOURCE_EXHAUSTED);
    }
  });

  it("binds to loopback by default (sidecar mode)", () => {
    expect(loadConfig({}).host).toBe("127.0.0.1");
  });
});

describe("admin rate limit", () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startTestApp({ clock: false, redis: false, env: { QUOTA_ADMIN_TOKEN: "admin-token-0123456789", QUOTA_ADMIN_RATE_PER_MINUTE: "5" } });
  });
  afterAll(async () => t?.stop());

  it("limits admin calls per credential", async () => {
    const c = clients("grpc-js", { grpc: t.app.grpcPort, http: t.app.httpPort });
    const codes: Array<number | undefined> = [];
    for (let i = 0; i < 7; i++) codes.push(await c.admin.listPlans({}, ADMIN).then(() => 0, (e) => codeOf(e)));
    c.close();
    expect(codes).toEqual([0, 0, 0, 0, 0, grpc.status.RESOURCE_EXHAUSTED, grpc.status.RESOURCE_EXHAUSTED]);
  });
});

describe("mTLS", () => {
  let t: TestApp;
  const pki = makePki();
  beforeAll(async () => {
    t = await startTestApp({
      clock: false,
      redis: false,
      env: {
        QUOTA_ADMIN_TOKEN: "admin-token-0123456789",
        QUOTA_SERVICE_TOKEN: "svc-token",
        QUOTA_TLS_CERT_FILE: pki.serverCert,
        QUOTA_TLS_KEY_FILE: pki.serverKey,
        QUOTA_TLS_CLIENT_CA_FILE: pki.caFile,
      },
    });
  });
  afterAll(async () => t?.stop());

  it("admits a backend with a client certificate without a token, and refuses one without a certificate", async () => {
    const withCert = clients("grpc-js", { grpc: t.app.grpcPort, http: t.app.httpPort }, grpc.credentials.createSsl(pki.caCert, pki.clientKey, pki.clientCert));
    await withCert.admin.applyPlans({ document: PLANS }, ADMIN);
    const s = await seed(withCert);
    const ok = await withCert.quota.checkAndReserve({ apiKey: s.apiKey, product: "api", method: "get" });
    expect(ok.decision).toBe(Decision.ALLOWED);
    withCert.close();
    const noCert = clients("grpc-js", { grpc: t.app.grpcPort, http: t.app.httpPort }, grpc.credentials.createSsl(pki.caCert));
    const err = await noCert.quota.checkAndReserve({ apiKey: s.apiKey, product: "api", method: "get" }).catch((e) => e);
    expect(codeOf(err)).toBe(grpc.status.UNAVAILABLE);
    noCert.close();
    const plain = clients("grpc-js", { grpc: t.app.grpcPort, http: t.app.httpPort });
    expect(codeOf(await plain.quota.checkAndReserve({ apiKey: s.apiKey, product: "api", method: "get" }).catch((e) => e))).toBe(grpc.status.UNAVAILABLE);
    plain.close();

    // The same on the Connect port (HTTPS): a verified client certificate is enough; no certificate, no connection.
    const post = (withCert: boolean) =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        const req = https.request(
          {
            host: "127.0.0.1",
            port: t.app.httpPort,
            path: "/quota.v1.QuotaService/CheckAndReserve",
            method: "POST",
            ca: pki.caCert,
            ...(withCert ? { key: pki.clientKey, cert: pki.clientCert } : {}),
            headers: { "content-type": "application/json" },
          },
          (res) => {
            let body = "";
            res.on("data", (d) => (body += d));
            res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
          },
        );
        req.on("error", reject);
        req.end(JSON.stringify({ apiKey: s.apiKey, product: "api", method: "get" }));
      });
    const viaConnect = await post(true);
    expect(viaConnect.status, viaConnect.body).toBe(200);
    expect(JSON.parse(viaConnect.body).decision).toBe("ALLOWED");
    await expect(post(false)).rejects.toThrow();
  });
});
