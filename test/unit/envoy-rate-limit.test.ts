/**
 * The Envoy RLS use case on its own, with a scripted quota port: what it asks CheckAndReserve for, and the policies
 * that have no Redis in them (deadline, unknown domain, shadow of key problems, config validation).
 */
import { describe, expect, it } from "vitest";
import { loadConfig, ConfigError } from "../../src/config/config.ts";
import { EnvoyRateLimit, envoyConfigSchema, storeDeadlineMs, type QuotaPort } from "../../src/core/envoy-rate-limit.ts";
import { UnavailableError } from "../../src/core/errors.ts";
import type { CheckAnswer, CheckRequest, LimitStatusOut, ReleaseRequest } from "../../src/core/quota-service.ts";

const KEY = "qa_abcdefghijklmnop_secretsecretsecret";

function allowed(limits: LimitStatusOut[] = []): CheckAnswer {
  return { decision: "ALLOWED", reservationId: "r~acc~x", overage: false, limits, headers: {}, cost: 1n, reservedSpendMicros: 0n, failOpen: false, deniedLimit: "", replayed: false };
}

function limit(over: Partial<LimitStatusOut>): LimitStatusOut {
  return { name: "l", scope: "SUBSCRIPTION", kind: "QUOTA", unit: "units", product: "", limit: 10n, used: 0n, remaining: 10n, overage: 0n, overageTotal: 0n, exceeded: false, sources: [], ...over };
}

class FakeQuota implements QuotaPort {
  checks: CheckRequest[] = [];
  releases: ReleaseRequest[] = [];
  readonly answer: (req: CheckRequest) => Promise<CheckAnswer>;
  constructor(answer: (req: CheckRequest) => Promise<CheckAnswer>) {
    this.answer = answer;
  }
  checkAndReserve(req: CheckRequest) {
    this.checks.push(req);
    return this.answer(req);
  }
  async release(req: ReleaseRequest) {
    this.releases.push(req);
    return { state: "COMMITTED" as const, chargedCost: 0n, refundedCost: 0n, chargedSpendMicros: 0n, overage: 0n, replayed: false };
  }
}

function limiter(quota: QuotaPort, config: unknown = {}, now = 1_000_000) {
  return new EnvoyRateLimit({ quota, config: envoyConfigSchema.parse({ domains: { d: { product: "api" } }, ...(config as object) }), clock: { now: () => now } });
}

const req = (entries: Array<[string, string]>, extra: { hitsAddend?: number; domain?: string; descHits?: bigint } = {}) => ({
  domain: extra.domain ?? "d",
  hitsAddend: extra.hitsAddend ?? 0,
  descriptors: [{ entries: entries.map(([key, value]) => ({ key, value })), ...(extra.descHits !== undefined ? { hitsAddend: extra.descHits } : {}) }],
});

describe("EnvoyRateLimit", () => {
  it("asks for one CheckAndReserve: product from the domain, method from the entry, one hit at the plan weight, N hits as cost", async () => {
    const q = new FakeQuota(async () => allowed());
    const rl = limiter(q);
    await rl.shouldRateLimit(req([["api_key", KEY], ["method", "/v1/x?y=1"]]));
    await rl.shouldRateLimit(req([["api_key", KEY]], { hitsAddend: 9 }));
    await rl.shouldRateLimit(req([["api_key", KEY]], { hitsAddend: 9, descHits: 0n }));
    expect(q.checks.map((c) => ({ product: c.product, method: c.method, cost: c.cost, mode: c.mode, apiKey: c.apiKey }))).toEqual([
      { product: "api", method: "/v1/x", cost: undefined, mode: "ENFORCE", apiKey: KEY },
      { product: "api", method: "default", cost: 9n, mode: "ENFORCE", apiKey: KEY },
      { product: "api", method: "default", cost: undefined, mode: "CHECK_ONLY", apiKey: KEY },
    ]);
    // Admitted, counted calls are committed at once; the check-only one had nothing to commit.
    await new Promise((r) => setImmediate(r));
    expect(q.releases.map((r) => r.outcome)).toEqual(["COMMIT", "COMMIT"]);
  });

  it("past its deadline answers by the domain's failure mode and cancels a reservation that arrives later", async () => {
    let finish!: (a: CheckAnswer) => void;
    const q = new FakeQuota(() => new Promise((resolve) => (finish = resolve)));
    const closed = limiter(q, { deadlineMs: 20 });
    const started = Date.now();
    const a = await closed.shouldRateLimit(req([["api_key", KEY]]));
    expect(Date.now() - started).toBeLessThan(500);
    expect(a).toMatchObject({ code: "OVER_LIMIT", metadata: { decision: "DENIED", reason: "UNAVAILABLE" } });
    expect(JSON.parse(a.body!)).toEqual({ reason: "UNAVAILABLE", retry_after: null, denied_limit: "" });
    finish(allowed());
    await new Promise((r) => setTimeout(r, 10));
    expect(q.releases).toEqual([{ reservationId: "r~acc~x", outcome: "CANCEL", actualMeters: {} }]);

    // Failing open, the call went ahead: a reservation that arrives later is committed, not refunded.
    const late = new FakeQuota(() => new Promise((resolve) => (finish = resolve)));
    const open = limiter(late, { deadlineMs: 20, domains: { d: { product: "api", failureMode: "open" } } });
    expect(await open.shouldRateLimit(req([["api_key", KEY]]))).toMatchObject({ code: "OK", metadata: { decision: "ALLOWED", fail_open: true } });
    finish(allowed());
    await new Promise((r) => setTimeout(r, 10));
    expect(late.releases.map((r) => r.outcome)).toEqual(["COMMIT"]);
  });

  it("an UnavailableError from the core (key store down) is a decision, not an error", async () => {
    const rl = limiter(new FakeQuota(async () => { throw new UnavailableError("key store unreachable"); }));
    expect(await rl.shouldRateLimit(req([["api_key", KEY]]))).toMatchObject({ code: "OVER_LIMIT", metadata: { reason: "UNAVAILABLE" } });
  });

  it("unknownDomain: ok answers OK for every descriptor without calling the core", async () => {
    const q = new FakeQuota(async () => allowed());
    const a = await limiter(q, { unknownDomain: "ok" }).shouldRateLimit(req([["api_key", KEY]], { domain: "other" }));
    expect(a.code).toBe("OK");
    expect(a.statuses).toEqual([{ code: "OK", remaining: 0 }]);
    expect(q.checks).toHaveLength(0);
    // "__proto__" and friends are unknown domains, not object members.
    await expect(limiter(q).shouldRateLimit(req([["api_key", KEY]], { domain: "__proto__" }))).rejects.toThrow(/domain: unknown domain/);
  });

  it("a shadow domain answers OK for key problems and outages too, reporting the would-be reason", async () => {
    const q = new FakeQuota(async () => { throw new UnavailableError("down"); });
    const rl = limiter(q, { domains: { d: { product: "api", shadow: true } } });
    expect(await rl.shouldRateLimit(req([["other", "x"]]))).toMatchObject({ code: "OK", metadata: { decision: "ALLOWED", mode: "SHADOW", shadow_reason: "KEY_INVALID" } });
    expect(await rl.shouldRateLimit(req([["api_key", KEY]]))).toMatchObject({ code: "OK", metadata: { decision: "ALLOWED", shadow_reason: "UNAVAILABLE" } });
    expect(q.checks.map((c) => c.mode)).toEqual(["SHADOW"]);
  });

  it("reports units only for exact windows, and the reset from the clock", async () => {
    const now = 1_000_000;
    const limits = [
      limit({ name: "s", kind: "RATE", windowMs: 1000, resetAt: now + 400 }),
      limit({ name: "w", kind: "RATE", windowMs: 7 * 86_400_000 }),
      limit({ name: "r30d", kind: "RATE", windowMs: 30 * 86_400_000 }),
      limit({ name: "m", kind: "QUOTA", windowMs: 30 * 86_400_000, resetAt: now + 86_400_000 }),
      limit({ name: "b", kind: "BUDGET", limit: 2n ** 40n, remaining: -5n }),
    ];
    const rl = limiter(new FakeQuota(async () => allowed(limits)), { domains: { d: { product: "api", limitEntry: "generic_key" } } });
    const a = await rl.shouldRateLimit({
      domain: "d",
      hitsAddend: 0,
      descriptors: ["s", "w", "r30d", "m", "b"].map((n) => ({ entries: [{ key: "generic_key", value: n }, { key: "api_key", value: KEY }] })),
    });
    expect(a.statuses.map((s) => [s.limit?.unit, s.resetSeconds])).toEqual([["SECOND", 1], ["WEEK", undefined], ["UNKNOWN", undefined], ["MONTH", 86_400], ["UNKNOWN", undefined]]);
    expect(a.statuses[4]).toMatchObject({ remaining: 0, limit: { requestsPerUnit: 4_294_967_295 } });
  });

  it("the RLS counter-store deadline is 5 ms under the answer's", () => {
    expect(storeDeadlineMs(envoyConfigSchema.parse({}))).toBe(10);
    expect(storeDeadlineMs(envoyConfigSchema.parse({ deadlineMs: 6 }))).toBe(1);
  });
});

describe("envoy configuration", () => {
  it("is read from QUOTA_ENVOY_CONFIG (YAML or JSON) with defaults", () => {
    const c = loadConfig({ QUOTA_ENVOY_CONFIG: "domains:\n  edge: { product: api }\n" }, {}, undefined);
    expect(c.envoy.deadlineMs).toBe(15);
    expect(c.envoy.domains.edge).toMatchObject({ product: "api", apiKeyEntry: "api_key", methodEntry: "method", limitEntry: "limit", shadow: false, missingKey: "deny", failureMode: "closed" });
    expect(loadConfig({}, {}, undefined).envoy).toEqual({ deadlineMs: 15, unknownDomain: "error", domains: {} });
  });

  it("names every bad field, including typos", () => {
    try {
      loadConfig({ QUOTA_ENVOY_CONFIG: JSON.stringify({ deadlineMs: 1, domains: { edge: { product: "Bad Product", shadw: true } } }) }, {}, undefined);
      expect.unreachable();
    } catch (e) {
      const problems = (e as ConfigError).problems.join("\n");
      expect(problems).toContain("envoy (QUOTA_ENVOY_CONFIG).deadlineMs");
      expect(problems).toContain("envoy (QUOTA_ENVOY_CONFIG).domains.edge.product");
      expect(problems).toMatch(/domains\.edge.*shadw/);
    }
    expect(() => loadConfig({ QUOTA_ENVOY_CONFIG: "domains: [unclosed" }, {}, undefined)).toThrow(/QUOTA_ENVOY_CONFIG.*not valid YAML/);
    expect(() => loadConfig({ QUOTA_ENVOY_CONFIG: JSON.stringify({ domains: { edge: { product: "api", limitEntry: "api_key" } } }) }, {}, undefined)).toThrow(
      /domains\.edge\.limitEntry: is the same entry key as apiKeyEntry/,
    );
  });
});
