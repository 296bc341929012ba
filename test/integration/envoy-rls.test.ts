/**
 * Envoy's rate-limit service (envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit) on the gRPC port, called
 * by a real grpc-js client with the descriptor shapes Envoy's route actions produce, against real Postgres and Redis.
 */
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import * as grpc from "@grpc/grpc-js";
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RateLimitResponse_Code as Code, RateLimitResponse_RateLimit_Unit as Unit, type RateLimitResponse } from "../../src/gen/envoy/service/ratelimit/v3/rls_pb.ts";
import { startTestApp, type TestApp } from "../support/app.ts";
import { clients, codeOf, messageOf, type Clients } from "../support/clients.ts";
import { bodyOf, genericKey, headerValueMatch, headersOf, remoteAddress, requestHeaders, rlsClient, type RlsClient, type RlsRequestInit } from "../support/envoy-client.ts";
import { applyPlans, seedAccount } from "../support/fixtures.ts";
import { PrivateRedis } from "../support/redis-server.ts";
import { healthCheck } from "../support/server-process.ts";
import { makePki } from "../support/tls.ts";

const run = promisify(execFile);
const REPO_ROOT = new URL("../..", import.meta.url).pathname;
const TOKEN = "envoy-test-service-token";
const AUTH = { authorization: `Bearer ${TOKEN}` };

const PLANS = `
plans:
  - id: edge
    name: edge
    methods: { default: 1, costs: { "/v1/heavy": 7 } }
    limits:
      - { name: daily, kind: quota, limit: 1000, period: daily }
      - { name: per-minute, kind: rate, limit: 100, window: 1m }
      - { name: per-10s, kind: rate, limit: 500, window: 10s }
      - { name: monthly, kind: quota, limit: 100000, period: monthly }
      - { name: in-flight, kind: concurrency, limit: 2 }
  - id: tight
    name: tight
    limits:
      - { name: daily, kind: quota, limit: 25, period: daily }
      - { name: burst, kind: rate, limit: 1000, window: 1m }
  - id: huge
    name: huge
    limits:
      - { name: big, kind: quota, limit: 1000000000000000, period: never }
`;

const ENVOY = {
  // Generous for a loaded 2-core test machine: this file tests the mapping; the fault suite below tests the deadline.
  deadlineMs: 2000,
  domains: {
    edge: { product: "api", apiKeyEntry: "api_key", methodEntry: "path", limitEntry: "generic_key" },
    "edge-shadow": { product: "api", methodEntry: "path", limitEntry: "generic_key", shadow: true },
    "edge-keyless-ok": { product: "api", missingKey: "ok" },
    "edge-key-id": { product: "api", keyIdEntry: "key_id" },
  },
};

/** The shape of one Envoy route: one rate_limits entry per plan limit it reports, all carrying the key. */
function call(apiKey: string, extra: Partial<RlsRequestInit> = {}): RlsRequestInit {
  return { domain: "edge", descriptors: [{ entries: [genericKey("daily"), requestHeaders("api_key", apiKey), requestHeaders("path", "/v1/things")] }], ...extra };
}

function remainingOf(r: RateLimitResponse, i = 0): number {
  return r.statuses[i]!.limitRemaining;
}

describe("Envoy rate-limit service", () => {
  let t: TestApp;
  let c: Clients;
  let rls: RlsClient;
  const should = (req: RlsRequestInit) => rls.shouldRateLimit(req, AUTH);
  const used = async (apiKey: string, limit: string) => {
    const l = await c.quota.getLimits({ apiKey }, AUTH);
    return l.subscriptions[0]!.limits.find((x) => x.name === limit)!;
  };

  beforeAll(async () => {
    t = await startTestApp({ env: { QUOTA_SERVICE_TOKEN: TOKEN, QUOTA_ENVOY_CONFIG: JSON.stringify(ENVOY) } });
    c = clients("grpc-js", { grpc: t.app.grpcPort, http: t.app.httpPort });
    rls = rlsClient(t.app.grpcPort);
    await applyPlans(c, PLANS);
  });
  afterAll(async () => {
    rls?.close();
    c?.close();
    await t?.stop();
  });

  it("is listed by reflection and callable with Envoy's names through it (buf curl, no proto files); health knows it", async () => {
    expect(await healthCheck(`127.0.0.1:${t.app.grpcPort}`, "envoy.service.ratelimit.v3.RateLimitService")).toBe("SERVING");
    const s = await seedAccount(c, "edge");
    const buf = `${REPO_ROOT}node_modules/.bin/buf`;
    const base = `http://127.0.0.1:${t.app.grpcPort}`;
    const curl = ["curl", "--protocol", "grpc", "--http2-prior-knowledge", "-H", `authorization: Bearer ${TOKEN}`];
    const list = await run(buf, [...curl, "--list-services", base], { timeout: 30_000, cwd: REPO_ROOT });
    expect(list.stdout.split("\n").map((l) => l.trim())).toContain("envoy.service.ratelimit.v3.RateLimitService");
    const body = { domain: "edge", descriptors: [{ entries: [{ key: "api_key", value: s.apiKey }] }], hits_addend: 1 };
    const res = await run(buf, [...curl, "-d", JSON.stringify(body), `${base}/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`], { timeout: 30_000, cwd: REPO_ROOT });
    const out = JSON.parse(res.stdout) as { overallCode: string; statuses: Array<{ code: string }>; dynamicMetadata: Record<string, unknown> };
    expect(out.overallCode).toBe("OK");
    expect(out.statuses).toHaveLength(1);
    expect(out.dynamicMetadata).toMatchObject({ decision: "ALLOWED", key_id: s.keyId });
  }, 60_000);

  it("answers one status per descriptor, in request order, from one atomic CheckAndReserve", async () => {
    const s = await seedAccount(c, "edge");
    const r = await should({
      domain: "edge",
      descriptors: [
        { entries: [genericKey("daily"), requestHeaders("api_key", s.apiKey)] },
        { entries: [remoteAddress("10.1.2.3")] },
        { entries: [headerValueMatch("beta-clients")] },
        { entries: [requestHeaders("api_key", s.apiKey), requestHeaders("path", "/v1/things?page=2")] },
        { entries: [genericKey("per-minute")] },
        { entries: [genericKey("per-10s")] },
        { entries: [genericKey("monthly")] },
        { entries: [genericKey("no-such-limit")] },
      ],
    });
    expect(r.overallCode).toBe(Code.OK);
    expect(r.statuses).toHaveLength(8);
    expect(r.statuses.map((x) => x.code)).toEqual(Array(8).fill(Code.OK));
    const [daily, addr, match, keyOnly, minute, tenS, monthly, unknown] = r.statuses;
    expect(daily!.currentLimit).toMatchObject({ name: "daily", requestsPerUnit: 1000, unit: Unit.DAY });
    expect(daily!.limitRemaining).toBe(999);
    const reset = Number(daily!.durationUntilReset!.seconds);
    expect(reset).toBeGreaterThan(0);
    expect(reset).toBeLessThanOrEqual(86_400);
    // Unmapped descriptors (remote_address, header_value_match, a limit the plan does not have): OK, no limit.
    for (const u of [addr, match, unknown]) expect(u!.currentLimit).toBeUndefined();
    // A descriptor that carries only the key reports the limit closest to exhaustion (99 of 100 per minute).
    expect(keyOnly!.currentLimit).toMatchObject({ name: "per-minute", requestsPerUnit: 100, unit: Unit.MINUTE });
    expect(minute!.currentLimit).toMatchObject({ name: "per-minute", requestsPerUnit: 100, unit: Unit.MINUTE });
    expect(minute!.limitRemaining).toBe(99);
    // A 10 s window is not an Envoy unit: UNKNOWN, with the name.
    expect(tenS!.currentLimit).toMatchObject({ name: "per-10s", requestsPerUnit: 500, unit: Unit.UNKNOWN });
    expect(monthly!.currentLimit).toMatchObject({ name: "monthly", unit: Unit.MONTH });

    const h = headersOf(r);
    expect(h["RateLimit-Policy"]).toContain('"daily";q=1000;w=86400');
    expect(h["RateLimit"]).toContain('"daily";r=999');
    expect(h).toMatchObject({ "X-UnitsLimit-Quota-Allocated": "1000", "X-UnitsLimit-Quota-Used": "1", "X-UnitsLimit-Quota-Remaining": "999" });
    expect(h["content-type"]).toBeUndefined();
    expect(r.rawBody).toHaveLength(0);
    expect(r.dynamicMetadata).toMatchObject({ decision: "ALLOWED", reason: "", mode: "ENFORCE", product: "api", key_id: s.keyId, fail_open: false });
    expect(String(r.dynamicMetadata!.reservation_id)).toMatch(/^r~/);
    // Two descriptors carried the key: still one call counted.
    expect((await used(s.apiKey, "daily")).used).toBe(1n);
    expect((await used(s.apiKey, "per-minute")).used).toBe(1n);
  });

  it("selects the plan's method weight from the path (query string dropped; a path that is no method name gets the default)", async () => {
    const s = await seedAccount(c, "edge");
    const withPath = (path: string) => ({ domain: "edge", descriptors: [{ entries: [genericKey("daily"), requestHeaders("api_key", s.apiKey), requestHeaders("path", path)] }] });
    expect(remainingOf(await should(withPath("/v1/heavy?verbose=1")))).toBe(993);
    expect(remainingOf(await should(withPath("/v1/things")))).toBe(992);
    const odd = await should(withPath("/v1/heavy thing%20"));
    expect(odd.overallCode).toBe(Code.OK);
    expect(remainingOf(odd)).toBe(991);
  });

  it("commits every admitted reservation at once: no concurrency slot or reservation lingers", async () => {
    const s = await seedAccount(c, "edge");
    // in-flight allows 2; five sequential calls would be denied from the third if slots were held until the TTL.
    for (let i = 0; i < 5; i++) expect((await should(call(s.apiKey))).overallCode).toBe(Code.OK);
    await expect.poll(async () => (await used(s.apiKey, "in-flight")).used, { timeout: 5000 }).toBe(0n);
    expect((await used(s.apiKey, "daily")).used).toBe(5n);
  });

  it("hits_addend: a per-descriptor value that is set wins (0 = check only); otherwise the request's, 0 read as 1", async () => {
    const s = await seedAccount(c, "edge");
    const daily = async () => (await used(s.apiKey, "daily")).used;
    await should(call(s.apiKey, { hitsAddend: 5 }));
    expect(await daily()).toBe(5n);
    await should(call(s.apiKey, { hitsAddend: 0 }));
    expect(await daily()).toBe(6n);
    await should({ domain: "edge", hitsAddend: 5, descriptors: [{ entries: [genericKey("daily"), requestHeaders("api_key", s.apiKey)], hitsAddend: 3n }] });
    expect(await daily()).toBe(9n);
    const check = await should({ domain: "edge", hitsAddend: 5, descriptors: [{ entries: [genericKey("daily"), requestHeaders("api_key", s.apiKey)], hitsAddend: 0n }] });
    expect(check.overallCode).toBe(Code.OK);
    expect(check.dynamicMetadata).toMatchObject({ mode: "CHECK_ONLY", reservation_id: "" });
    expect(await daily()).toBe(9n);
    // Several descriptors of the call: one check at the largest of their hits (never under-counted).
    await should({
      domain: "edge",
      descriptors: [
        { entries: [genericKey("daily"), requestHeaders("api_key", s.apiKey)], hitsAddend: 2n },
        { entries: [genericKey("monthly"), requestHeaders("api_key", s.apiKey)], hitsAddend: 4n },
        { entries: [remoteAddress("10.0.0.9")], hitsAddend: 100n },
      ],
    });
    expect(await daily()).toBe(13n);
    expect((await used(s.apiKey, "monthly")).used).toBe(13n);
    expect((await used(s.apiKey, "per-minute")).used).toBe(4n);
  });

  it("N parallel calls against a quota of L admit exactly min(N, L); a denial counts nowhere and says why", async () => {
    const s = await seedAccount(c, "tight");
    const N = 60;
    const L = 25;
    const req = { domain: "edge", descriptors: [{ entries: [genericKey("daily"), requestHeaders("api_key", s.apiKey)] }, { entries: [genericKey("burst"), requestHeaders("api_key", s.apiKey)] }] };
    const answers = await Promise.all(Array.from({ length: N }, () => should(req)));
    const ok = answers.filter((a) => a.overallCode === Code.OK);
    expect(ok).toHaveLength(Math.min(N, L));
    expect(answers.filter((a) => a.overallCode === Code.OVER_LIMIT)).toHaveLength(N - L);
    expect((await used(s.apiKey, "daily")).used).toBe(BigInt(L));
    // The rate limit did not count the denied calls: one atomic check, not one per descriptor.
    expect((await used(s.apiKey, "burst")).used).toBe(BigInt(L));

    const denied = answers.find((a) => a.overallCode === Code.OVER_LIMIT)!;
    expect(denied.statuses.map((x) => x.code)).toEqual([Code.OVER_LIMIT, Code.OK]);
    expect(denied.statuses[0]).toMatchObject({ limitRemaining: 0, currentLimit: { name: "daily", requestsPerUnit: 25, unit: Unit.DAY } });
    const body = bodyOf(denied) as { reason: string; retry_after: number; denied_limit: string };
    expect(body).toMatchObject({ reason: "QUOTA_EXHAUSTED", denied_limit: "daily" });
    expect(body.retry_after).toBeGreaterThan(0);
    const h = headersOf(denied);
    expect(h["content-type"]).toBe("application/json");
    expect(h["Retry-After"]).toBe(String(body.retry_after));
    expect(h["X-UnitsLimit-Quota-Remaining"]).toBe("0");
    expect(denied.dynamicMetadata).toMatchObject({ decision: "DENIED", reason: "QUOTA_EXHAUSTED", reservation_id: "", denied_limit: "daily" });

    // hits_addend 0 on an exhausted quota: a check that answers OVER_LIMIT and counts nothing.
    const check = await should({ ...req, hitsAddend: 0, descriptors: req.descriptors.map((d) => ({ ...d, hitsAddend: 0n })) });
    expect(check.overallCode).toBe(Code.OVER_LIMIT);
    expect(check.dynamicMetadata).toMatchObject({ mode: "CHECK_ONLY", reason: "QUOTA_EXHAUSTED" });
    expect((await used(s.apiKey, "burst")).used).toBe(BigInt(L));

    // The same exhausted key through a shadow domain: decided and recorded, always OK.
    const shadow = await should({ ...req, domain: "edge-shadow" });
    expect(shadow.overallCode).toBe(Code.OK);
    expect(shadow.statuses.map((x) => x.code)).toEqual([Code.OK, Code.OK]);
    expect(shadow.dynamicMetadata).toMatchObject({ decision: "ALLOWED", mode: "SHADOW", shadow_reason: "QUOTA_EXHAUSTED" });
    expect(shadow.rawBody).toHaveLength(0);
    expect((await used(s.apiKey, "burst")).used).toBe(BigInt(L));
  });

  it("a shadow domain counts what it admits", async () => {
    const s = await seedAccount(c, "tight");
    const r = await should({ domain: "edge-shadow", descriptors: [{ entries: [requestHeaders("api_key", s.apiKey)] }] });
    expect(r.overallCode).toBe(Code.OK);
    expect(r.dynamicMetadata).toMatchObject({ mode: "SHADOW", decision: "ALLOWED" });
    expect(r.dynamicMetadata!.shadow_reason).toBeUndefined();
    expect((await used(s.apiKey, "daily")).used).toBe(1n);
  });

  it("clamps limits and remaining to uint32", async () => {
    const s = await seedAccount(c, "huge");
    const r = await should({ domain: "edge", descriptors: [{ entries: [genericKey("big"), requestHeaders("api_key", s.apiKey)] }] });
    expect(r.statuses[0]).toMatchObject({ code: Code.OK, limitRemaining: 4_294_967_295, currentLimit: { name: "big", requestsPerUnit: 4_294_967_295, unit: Unit.UNKNOWN } });
    expect(r.statuses[0]!.durationUntilReset).toBeUndefined();
  });

  it("resolves a key id when the domain names a key id entry", async () => {
    const s = await seedAccount(c, "tight");
    const r = await should({ domain: "edge-key-id", descriptors: [{ entries: [requestHeaders("key_id", s.keyId)] }] });
    expect(r.overallCode).toBe(Code.OK);
    expect(r.dynamicMetadata).toMatchObject({ key_id: s.keyId });
    const bad = await should({ domain: "edge-key-id", descriptors: [{ entries: [requestHeaders("key_id", "NOT A KEY ID")] }] });
    expect(bad.overallCode).toBe(Code.OVER_LIMIT);
    expect(bodyOf(bad)).toMatchObject({ reason: "KEY_INVALID" });
  });

  describe("bad input: a clear error for what Envoy's configuration produces, a decision for what clients control, never INTERNAL", () => {
    const rejects = async (req: RlsRequestInit, field: string) => {
      const e = await should(req).then(() => undefined, (x: unknown) => x);
      expect(codeOf(e), messageOf(e)).toBe(status.INVALID_ARGUMENT);
      expect(messageOf(e)).toContain(field);
    };

    it("no descriptors, an unknown domain, empty entries, an entry without a key, an absurd hits_addend: INVALID_ARGUMENT naming the field", async () => {
      const s = await seedAccount(c, "tight");
      await rejects({ domain: "edge", descriptors: [] }, "descriptors");
      await rejects({ domain: "", descriptors: [{ entries: [requestHeaders("api_key", s.apiKey)] }] }, "domain");
      await rejects({ domain: "no-such-domain", descriptors: [{ entries: [requestHeaders("api_key", s.apiKey)] }] }, 'unknown domain "no-such-domain" (configured: edge, edge-shadow');
      await rejects({ domain: "edge", descriptors: [{ entries: [requestHeaders("api_key", s.apiKey)] }, { entries: [] }] }, "descriptors[1].entries");
      await rejects({ domain: "edge", descriptors: [{ entries: [requestHeaders("api_key", s.apiKey), { key: "", value: "x" }] }] }, "descriptors[0].entries[1].key");
      await rejects({ domain: "edge", descriptors: [{ entries: [requestHeaders("api_key", s.apiKey)], hitsAddend: 2n ** 63n }] }, "descriptors[0].hits_addend");
      // Nothing was counted by any of them.
      expect((await used(s.apiKey, "daily")).used).toBe(0n);
    });

    it("a missing, wrong or conflicting API key is OVER_LIMIT KEY_INVALID (or OK where the domain says missingKey: ok)", async () => {
      const s = await seedAccount(c, "tight");
      const other = await seedAccount(c, "tight");
      const keyless = { descriptors: [{ entries: [genericKey("daily"), remoteAddress("10.0.0.1")] }, { entries: [remoteAddress("10.0.0.1")] }] };
      const missing = await should({ domain: "edge", ...keyless });
      expect(missing.overallCode).toBe(Code.OVER_LIMIT);
      expect(missing.statuses.map((x) => x.code)).toEqual([Code.OVER_LIMIT, Code.OK]);
      expect(bodyOf(missing)).toMatchObject({ reason: "KEY_INVALID", retry_after: null });
      const allowed = await should({ domain: "edge-keyless-ok", ...keyless });
      expect(allowed.overallCode).toBe(Code.OK);
      expect(allowed.statuses).toHaveLength(2);
      expect(allowed.dynamicMetadata).toMatchObject({ decision: "NOT_CHECKED", reason: "KEY_MISSING" });

      for (const bad of ["qa_garbage", "x".repeat(5000), `${s.apiKey}x`, ""]) {
        const r = await should({ domain: "edge", descriptors: [{ entries: [requestHeaders("api_key", bad)] }] });
        expect(r.overallCode).toBe(Code.OVER_LIMIT);
        expect(r.dynamicMetadata).toMatchObject({ decision: "DENIED", reason: "KEY_INVALID" });
      }
      const conflict = await should({ domain: "edge", descriptors: [{ entries: [requestHeaders("api_key", s.apiKey)] }, { entries: [requestHeaders("api_key", other.apiKey)] }] });
      expect(conflict.overallCode).toBe(Code.OVER_LIMIT);
      expect(conflict.statuses.map((x) => x.code)).toEqual([Code.OVER_LIMIT, Code.OVER_LIMIT]);
      expect((await used(s.apiKey, "daily")).used).toBe(0n);
      expect((await used(other.apiKey, "daily")).used).toBe(0n);
    });

    it("malformed bytes are INVALID_ARGUMENT, and the service token is required like on every data-plane call", async () => {
      const s = await seedAccount(c, "tight");
      const noToken = await rls.shouldRateLimit(call(s.apiKey)).then(() => undefined, (x: unknown) => x);
      expect(codeOf(noToken)).toBe(status.UNAUTHENTICATED);
      const wrong = await rls.shouldRateLimit(call(s.apiKey), { authorization: "Bearer nope" }).then(() => undefined, (x: unknown) => x);
      expect(codeOf(wrong)).toBe(status.UNAUTHENTICATED);
      for (const bytes of [Buffer.from([0xff, 0xff, 0xff, 0xff]), Buffer.from([0x0a, 0x05, 0x61]), Buffer.from([0x12, 0x03, 0x0a, 0x01, 0xc3])]) {
        const e = await rls.raw(bytes, AUTH).then(() => undefined, (x: unknown) => x);
        expect(codeOf(e), messageOf(e)).toBe(status.INVALID_ARGUMENT);
        expect(messageOf(e)).toContain("envoy.service.ratelimit.v3.RateLimitRequest");
      }
      expect((await used(s.apiKey, "daily")).used).toBe(0n);
    });
  });
});

describe("Envoy rate-limit service with Redis down", () => {
  const DEADLINE_MS = 60;
  let redis: PrivateRedis;
  let t: TestApp;
  let c: Clients;
  let rls: RlsClient;
  beforeAll(async () => {
    redis = await PrivateRedis.start();
    t = await startTestApp({
      clock: false,
      env: { REDIS_URL: redis.url, QUOTA_ENVOY_CONFIG: JSON.stringify({ deadlineMs: DEADLINE_MS, domains: { edge: { product: "api" } } }) },
    });
    c = clients("grpc-js", { grpc: t.app.grpcPort, http: t.app.httpPort });
    rls = rlsClient(t.app.grpcPort);
    await applyPlans(
      c,
      `
plans:
  - { id: closed, name: closed, failureMode: closed, limits: [{ name: daily, kind: quota, limit: 1000, period: daily }] }
  - { id: open, name: open, failureMode: open, limits: [{ name: daily, kind: quota, limit: 1000, period: daily }] }
`,
    );
  });
  afterAll(async () => {
    rls?.close();
    c?.close();
    await t?.stop();
    await redis?.stop();
  });

  it("answers by the plan's failure mode within its own deadline, never with a gRPC error, and recovers", async () => {
    const closed = await seedAccount(c, "closed");
    const open = await seedAccount(c, "open");
    const req = (k: string) => ({ domain: "edge", descriptors: [{ entries: [requestHeaders("api_key", k)] }] });
    // The first call of a key loads it from Postgres and restores its account into Redis, which may take longer than
    // this short deadline on a loaded machine (then the domain's failureMode answers): warm both keys up first.
    for (const k of [closed.apiKey, open.apiKey]) {
      await expect.poll(async () => (await rls.shouldRateLimit(req(k))).dynamicMetadata, { timeout: 10_000, interval: 50 }).toMatchObject({ decision: "ALLOWED", fail_open: false });
    }

    await redis.stop();
    const timings: number[] = [];
    for (let i = 0; i < 10; i++) {
      const started = performance.now();
      const [a, b] = await Promise.all([rls.shouldRateLimit(req(closed.apiKey)), rls.shouldRateLimit(req(open.apiKey))]);
      timings.push(performance.now() - started);
      expect(a.overallCode).toBe(Code.OVER_LIMIT);
      expect(a.statuses.map((x) => x.code)).toEqual([Code.OVER_LIMIT]);
      expect(bodyOf(a)).toMatchObject({ reason: "UNAVAILABLE" });
      expect(a.dynamicMetadata).toMatchObject({ decision: "DENIED", reason: "UNAVAILABLE", fail_open: false });
      expect(b.overallCode).toBe(Code.OK);
      expect(b.dynamicMetadata).toMatchObject({ decision: "ALLOWED", fail_open: true, reservation_id: "" });
    }
    // The RLS deadline bounds the wait; the rest is one loopback gRPC round trip.
    expect(Math.max(...timings)).toBeLessThan(DEADLINE_MS + 250);

    await redis.startProcess();
    await expect.poll(async () => (await rls.shouldRateLimit(req(closed.apiKey))).overallCode, { timeout: 10_000, interval: 100 }).toBe(Code.OK);
  });
});

describe("Envoy rate-limit service over mTLS", () => {
  let t: TestApp;
  const pki = makePki();
  beforeAll(async () => {
    t = await startTestApp({
      clock: false,
      redis: false,
      env: {
        QUOTA_SERVICE_TOKEN: TOKEN,
        QUOTA_TLS_CERT_FILE: pki.serverCert,
        QUOTA_TLS_KEY_FILE: pki.serverKey,
        QUOTA_TLS_CLIENT_CA_FILE: pki.caFile,
        QUOTA_ENVOY_CONFIG: JSON.stringify({ deadlineMs: 2000, domains: { edge: { product: "api" } } }),
      },
    });
  });
  afterAll(async () => t?.stop());

  it("a gateway with a client certificate needs no token; without one it gets no connection", async () => {
    const creds = grpc.credentials.createSsl(pki.caCert, pki.clientKey, pki.clientCert);
    const c = clients("grpc-js", { grpc: t.app.grpcPort, http: t.app.httpPort }, creds);
    await applyPlans(c, PLANS);
    const s = await seedAccount(c, "tight");
    c.close();
    const withCert = rlsClient(t.app.grpcPort, creds);
    const ok = await withCert.shouldRateLimit(call(s.apiKey));
    expect(ok.overallCode).toBe(Code.OK);
    withCert.close();
    const noCert = rlsClient(t.app.grpcPort, grpc.credentials.createSsl(pki.caCert));
    const err = await noCert.shouldRateLimit(call(s.apiKey), AUTH).then(() => undefined, (x: unknown) => x);
    expect(codeOf(err)).toBe(status.UNAVAILABLE);
    noCert.close();
  });
});
