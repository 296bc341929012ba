/**
 * Issue 7 hardening, in-process (real Postgres and Redis, gRPC): payment references replayed only for the same
 * request, every idempotency key bound to its request, Duration/Timestamp ranges, user-named keys that collide with
 * Object's prototype, and one length limit for payment references.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { status, type ServiceError } from "@grpc/grpc-js";
import pg from "pg";
import { Decision } from "../../src/gen/quota/v1/types_pb.ts";
import { startTestApp, type TestApp } from "../support/app.ts";
import { ADMIN, clients, codeOf, messageOf, type Clients } from "../support/clients.ts";
import { applyPlans, deposit, seedAccount } from "../support/fixtures.ts";

const PLANS = `
plans:
  - id: hardening
    name: Hardening
    methods: { default: 2, costs: { heavy: 5 } }
    limits:
      - { name: monthly, kind: quota, limit: 1000, period: monthly }
      - { name: constructor, kind: quota, limit: 500, period: monthly }
    topUp: { limit: monthly, increment: 100, price: { units: 100, amount: "1.00" } }
  - id: hardening-credit
    name: Hardening credit
    limits:
      - { name: budget, kind: budget, scope: account }
    pricing: { perCall: "0.01", perMeter: { tokens: "0.000001" } }
    credit: { minimumDeposit: "1.00" }
`;

const usd = (units: bigint) => ({ currencyCode: "USD", units, nanos: 0 });
let serial = 0;
const uniq = (p: string) => `${p}-${Date.now().toString(36)}-${++serial}`;

async function failure(p: Promise<unknown>): Promise<{ code: number | undefined; message: string; reason: string }> {
  try {
    await p;
  } catch (e) {
    const md = (e as ServiceError).metadata;
    return { code: codeOf(e), message: messageOf(e), reason: String(md?.get("x-error-reason")[0] ?? "") };
  }
  throw new Error("expected the call to fail");
}

describe("issue 7 hardening (gRPC, Postgres, Redis)", () => {
  let t: TestApp;
  let c: Clients;
  beforeAll(async () => {
    t = await startTestApp({ clock: false, env: { QUOTA_IDEMPOTENCY_WAIT_MS: "300" } });
    c = clients("grpc-js", { grpc: t.app.grpcPort, http: t.app.httpPort });
    await applyPlans(c, PLANS);
  });
  afterAll(async () => {
    c?.close();
    await t?.stop();
  });

  const walletTopUp = (accountId: string, reference: string, dollars: bigint, idempotencyKey = uniq("k"), target: "wallet" | "credit" = "wallet") =>
    c.quota.topUp(
      { accountId, idempotencyKey, target: { case: target, value: { amount: usd(dollars) } }, funding: { case: "external", value: { reference, amount: usd(dollars), provider: "test" } } },
      {},
    );

  // ------------------------------------------------------------------ items 3 and 4

  it("item 3: a payment reference reused with another amount or target is ALREADY_EXISTS PAYMENT_REFERENCE_MISMATCH naming external.reference; the same request replays", async () => {
    const s = await seedAccount(c, "hardening");
    const ref = uniq("pay");
    const first = await walletTopUp(s.accountId, ref, 5n);
    expect(first.replayed).toBe(false);

    const otherAmount = await failure(walletTopUp(s.accountId, ref, 7n));
    expect(otherAmount.code).toBe(status.ALREADY_EXISTS);
    expect(otherAmount.reason).toBe("PAYMENT_REFERENCE_MISMATCH");
    expect(otherAmount.message).toMatch(/^external\.reference: /);

    const otherTarget = await failure(walletTopUp(s.accountId, ref, 5n, uniq("k"), "credit"));
    expect(otherTarget.code).toBe(status.ALREADY_EXISTS);
    expect(otherTarget.reason).toBe("PAYMENT_REFERENCE_MISMATCH");

    // The same payment (another idempotency key) is a replay of the first answer.
    const same = await walletTopUp(s.accountId, ref, 5n);
    expect(same.replayed).toBe(true);
    expect(same.transactionId).toBe(first.transactionId);

    const limits = await c.quota.getLimits({ accountId: s.accountId }, {});
    expect(limits.wallets.find((w) => w.kind === "prepaid")!.balance!.units).toBe(5n);
    expect(limits.wallets.find((w) => w.kind === "credit")!.balance!.units).toBe(0n);
  });

  it("item 3: an idempotency key reused with a different request is an error, not the old answer", async () => {
    const s = await seedAccount(c, "hardening");
    await deposit(c, s.accountId, "prepaid", 10n);
    const key = uniq("buy");
    const buy = (units: bigint) => c.quota.topUp({ apiKey: s.apiKey, idempotencyKey: key, target: { case: "quota", value: { lines: [{ units }] } }, funding: { case: "fromWallet", value: {} } }, {});
    const first = await buy(100n);
    expect((await buy(100n)).transactionId).toBe(first.transactionId);
    const other = await failure(buy(200n));
    expect(other.code).toBe(status.INVALID_ARGUMENT);
    expect(other.message).toMatch(/^idempotency_key: /);
    // Admin creates: the same rule for request_id.
    const rid = uniq("rid");
    await c.admin.createAccount({ id: uniq("acc").toLowerCase(), name: "one", requestId: rid }, ADMIN);
    const reused = await failure(c.admin.createAccount({ id: uniq("acc").toLowerCase(), name: "two", requestId: rid }, ADMIN));
    expect(reused.code).toBe(status.INVALID_ARGUMENT);
    expect(reused.message).toMatch(/^request_id: /);
    // CheckAndReserve: the same rule for idempotency_id (the same request replays; another one is refused, uncharged).
    const idem = uniq("call");
    const call = (method: string) => c.quota.checkAndReserve({ apiKey: s.apiKey, product: "api", method, idempotencyId: idem });
    const once = await call("heavy");
    expect(once.decision).toBe(Decision.ALLOWED);
    expect(await call("heavy")).toMatchObject({ replayed: true, reservationId: once.reservationId });
    const changed = await failure(call("light"));
    expect(changed.code).toBe(status.INVALID_ARGUMENT);
    expect(changed.message).toBe("idempotency_id: was already used for a different request (product, method, cost, spend, meters or TTL differ)");
    const used = (await c.quota.getLimits({ apiKey: s.apiKey })).subscriptions[0]!.limits.find((l) => l.name === "monthly")!.used;
    expect(used).toBe(5n); // only the first call ("heavy" costs 5)
  });

  it("item 4: Deposit with a used reference and another amount names payment.reference (DepositRequest has no idempotency key)", async () => {
    const s = await seedAccount(c, "hardening");
    const ref = uniq("pay");
    await c.admin.deposit({ accountId: s.accountId, wallet: "prepaid", payment: { reference: ref, amount: usd(5n), provider: "test" } }, ADMIN);
    const again = await c.admin.deposit({ accountId: s.accountId, wallet: "prepaid", payment: { reference: ref, amount: usd(5n), provider: "test" } }, ADMIN);
    expect(again.replayed).toBe(true);
    const f = await failure(c.admin.deposit({ accountId: s.accountId, wallet: "prepaid", payment: { reference: ref, amount: usd(7n), provider: "test" } }, ADMIN));
    expect(f.code).toBe(status.ALREADY_EXISTS);
    expect(f.reason).toBe("PAYMENT_REFERENCE_MISMATCH");
    expect(f.message).toMatch(/^payment\.reference: /);
    expect(f.message).not.toMatch(/idempotency_key|external\./);
    const w = await failure(c.admin.deposit({ accountId: s.accountId, wallet: "credit", payment: { reference: ref, amount: usd(5n), provider: "test" } }, ADMIN));
    expect(w.reason).toBe("PAYMENT_REFERENCE_MISMATCH");
    expect(w.message).toMatch(/^payment\.reference: /);
  });

  // ------------------------------------------------------------------ item 2 (the cross-process race: e2e/replicas)

  it("item 2: while a TopUp with the same idempotency key is still running, a repeat waits, then answers ABORTED IDEMPOTENCY_IN_PROGRESS (nothing applied); after it, the result", async () => {
    const s = await seedAccount(c, "hardening");
    await deposit(c, s.accountId, "prepaid", 3n);
    const key = uniq("buy");
    // Another request holding the key: a transaction that claimed it and has not committed yet.
    const holder = new pg.Client({ connectionString: t.databaseUrl });
    await holder.connect();
    try {
      await holder.query("begin");
      await holder.query(`insert into idempotency_records (scope, key, request_hash, response) values ($1, $2, 'x', '{"pending": true}')`, [`topup:${s.accountId}`, key]);
      const buy = () => c.quota.topUp({ apiKey: s.apiKey, idempotencyKey: key, target: { case: "quota", value: { lines: [{ units: 100n }] } }, funding: { case: "fromWallet", value: {} } }, {});
      const f = await failure(buy());
      expect(f.code).toBe(status.ABORTED);
      expect(f.reason).toBe("IDEMPOTENCY_IN_PROGRESS");
      const view = await c.quota.getLimits({ apiKey: s.apiKey }, {});
      expect(view.wallets.find((w) => w.kind === "prepaid")!.balance!.units).toBe(3n);
      await holder.query("rollback");
      // The holder gave up: the retry runs it.
      const r = await buy();
      expect(r.replayed).toBe(false);
      expect(r.newBalance!.units).toBe(2n);
    } finally {
      await holder.end();
    }
  });

  // ------------------------------------------------------------------ item 5

  it("item 5: a Duration or Timestamp outside the protobuf ranges is INVALID_ARGUMENT naming the field", async () => {
    const s = await seedAccount(c, "hardening");
    const check = (reservationTtl: { seconds: bigint; nanos: number }) =>
      c.quota.checkAndReserve({ apiKey: s.apiKey, product: "p", method: "m", reservationTtl }, {});
    for (const ttl of [
      { seconds: 0n, nanos: 2_000_000_000 },
      { seconds: 5n, nanos: 1_000_000_000 },
      { seconds: 5n, nanos: -1 },
      { seconds: -5n, nanos: 1 },
      { seconds: 315_576_000_001n, nanos: 0 },
    ]) {
      const f = await failure(check(ttl));
      expect(f.code, JSON.stringify(ttl, (_k, v) => (typeof v === "bigint" ? `${v}` : v))).toBe(status.INVALID_ARGUMENT);
      expect(f.message).toMatch(/^reservation_ttl: /);
    }
    expect((await check({ seconds: 1n, nanos: 500_000_000 })).decision).toBe(Decision.ALLOWED);

    const ts = (seconds: bigint, nanos: number) => ({ seconds, nanos });
    const cases: Array<[string, Promise<unknown>]> = [
      ["expires_at", c.admin.createApiKey({ accountId: s.accountId, subscriptionId: s.subscriptionId, name: "x", expiresAt: ts(4_000_000_000n, 1_000_000_000) }, ADMIN)],
      ["expires_at", c.admin.createApiKey({ accountId: s.accountId, subscriptionId: s.subscriptionId, name: "x", expiresAt: ts(4_000_000_000n, -1) }, ADMIN)],
      ["starts_at", c.admin.createSubscription({ accountId: s.accountId, planId: "hardening", startsAt: ts(1_800_000_000n, 2_000_000_000) }, ADMIN)],
      ["ends_at", c.admin.createSubscription({ accountId: s.accountId, planId: "hardening", endsAt: ts(253_402_300_800n, 0) }, ADMIN)],
      ["quota.valid_until", c.admin.adjust({ accountId: s.accountId, reason: "r", requestId: uniq("adj"), target: { case: "quota", value: { subscriptionId: s.subscriptionId, limit: "monthly", units: 1n, validUntil: ts(4_000_000_000n, -5) } } }, ADMIN)],
    ];
    for (const [field, p] of cases) {
      const f = await failure(p);
      expect(f.code, field).toBe(status.INVALID_ARGUMENT);
      expect(f.message.startsWith(`${field}: `), f.message).toBe(true);
    }
  });

  // ------------------------------------------------------------------ item 13

  it("item 13: methods, meters and limits named like Object's prototype members are ordinary names", async () => {
    const s = await seedAccount(c, "hardening");
    for (const method of ["constructor", "toString", "__proto__", "hasOwnProperty", "valueOf"]) {
      const r = await c.quota.checkAndReserve({ apiKey: s.apiKey, product: "p", method }, {});
      expect(r.decision, method).toBe(Decision.ALLOWED);
      expect(r.cost, method).toBe(2n); // the plan's default cost
    }
    const heavy = await c.quota.checkAndReserve({ apiKey: s.apiKey, product: "p", method: "heavy" }, {});
    expect(heavy.cost).toBe(5n);
    // A limit named "constructor" counts like any other (the key has no sub-limit of that name).
    const view = await c.quota.getLimits({ apiKey: s.apiKey }, {});
    expect(view.subscriptions[0]!.limits.find((l) => l.name === "constructor")!.used).toBe(2n * 5n + 5n);

    const credit = await seedAccount(c, "hardening-credit");
    await deposit(c, credit.accountId, "credit", 10n);
    const r = await c.quota.checkAndReserve({ apiKey: credit.apiKey, product: "p", method: "m", meters: { constructor: 3n, tokens: 1000n } }, {});
    expect(r.decision).toBe(Decision.ALLOWED);
    expect(r.reservedSpendMicros).toBe(10_000n + 1000n);
    const rel = await c.quota.release({ reservationId: r.reservationId, actualMeters: { constructor: 1n, tokens: 10n } }, {});
    expect(rel.chargedSpendMicros).toBe(10_000n + 10n);
  });

  // ------------------------------------------------------------------ item 14

  it("item 14: a payment reference longer than 128 characters is INVALID_ARGUMENT (TopUp and Deposit); 128 is accepted", async () => {
    const s = await seedAccount(c, "hardening");
    for (const len of [129, 200, 256]) {
      const ref = "r".repeat(len);
      const f = await failure(walletTopUp(s.accountId, ref, 1n));
      expect(f.code, String(len)).toBe(status.INVALID_ARGUMENT);
      expect(f.message).toMatch(/^external\.reference: /);
      const d = await failure(c.admin.deposit({ accountId: s.accountId, wallet: "prepaid", payment: { reference: ref, amount: usd(1n), provider: "test" } }, ADMIN));
      expect(d.code).toBe(status.INVALID_ARGUMENT);
      expect(d.message).toMatch(/^payment\.reference: /);
    }
    const ok = await walletTopUp(s.accountId, `${uniq("r")}`.padEnd(128, "x"), 1n);
    expect(ok.newBalance!.units).toBe(1n);
  });
});
