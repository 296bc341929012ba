/**
 * Two server processes sharing Postgres and Redis (issue 7, items 1 and 2): a change made on replica A reaches
 * replica B through the change bus — revocation (B answers KEY_REVOKED within 1 s), plan changes, TopUps, new keys —
 * also after B's subscriber connection was dropped; and concurrent TopUps that repeat an idempotency key across both
 * replicas never get an answer the first attempt would not get.
 */
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { status, type ServiceError } from "@grpc/grpc-js";
import { Redis } from "ioredis";
import pg from "pg";
import { Decision, DenyReason } from "../../src/gen/quota/v1/types_pb.ts";
import { ADMIN, clients, codeOf, messageOf, type Clients } from "../support/clients.ts";
import { TEST_REDIS_URL } from "../support/env.ts";
import { addKey, deposit, seedAccount } from "../support/fixtures.ts";
import { REPO_ROOT, ServerProcess } from "../support/server-process.ts";

const run = promisify(execFile);

const plans = (monthly: number) => `
plans:
  - id: rep-quota
    name: Replicated quota
    limits:
      - { name: monthly, kind: quota, limit: ${monthly}, period: monthly }
    topUp: { limit: monthly, increment: 100, price: { units: 100, amount: "1.00" } }
`;

/** Polls `read` until `done`, for at most `ms`; returns the last value and how long it took. */
async function within<T>(ms: number, read: () => Promise<T>, done: (v: T) => boolean): Promise<{ value: T; ms: number }> {
  const start = Date.now();
  for (;;) {
    const value = await read();
    if (done(value) || Date.now() - start > ms) return { value, ms: Date.now() - start };
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("replicas: changes on A reach B; idempotency across replicas", () => {
  let a: ServerProcess;
  let b: ServerProcess;
  let ca: Clients;
  let cb: Clients;
  beforeAll(async () => {
    // Generous Postgres timeouts: 200 TopUps on one wallet serialize on its row lock, on a machine that may be busy.
    a = await ServerProcess.create({ env: { QUOTA_LOG_LEVEL: "warn", QUOTA_STORE_DEADLINE_MS: "5000", QUOTA_DB_CONNECT_TIMEOUT_MS: "12000", QUOTA_DB_STATEMENT_TIMEOUT_MS: "12000" } });
    b = await ServerProcess.sibling(a);
    await a.start();
    await b.start();
    ca = clients("grpc-js", a.ports);
    cb = clients("grpc-js", b.ports);
    await ca.admin.applyPlans({ document: plans(1000) }, ADMIN);
  }, 60_000);
  afterAll(async () => {
    ca?.close();
    cb?.close();
    await b?.cleanup();
    await a?.cleanup();
  });

  const check = (c: Clients, apiKey: string) => c.quota.checkAndReserve({ apiKey, product: "api", method: "get" });

  it("item 1: a key revoked on A is KEY_REVOKED on B within 1 s (B had it cached)", async () => {
    const s = await seedAccount(ca, "rep-quota");
    expect((await check(cb, s.apiKey)).decision).toBe(Decision.ALLOWED); // cached on B
    await ca.admin.revokeApiKey({ keyId: s.keyId }, ADMIN);
    const r = await within(1000, () => check(cb, s.apiKey), (x) => x.reason === DenyReason.KEY_REVOKED);
    expect(r.value.decision).toBe(Decision.DENIED);
    expect(r.value.reason).toBe(DenyReason.KEY_REVOKED);
  });

  it("item 1: a plan change, a TopUp and a new key on A are visible on B at once", async () => {
    const s = await seedAccount(ca, "rep-quota");
    await deposit(ca, s.accountId, "prepaid", 5n);
    const limitOnB = async () => (await cb.quota.getLimits({ apiKey: s.apiKey })).subscriptions[0]!.limits[0]!.limit;
    expect(await limitOnB()).toBe(1000n);

    await ca.admin.applyPlans({ document: plans(2000) }, ADMIN);
    expect((await within(1000, limitOnB, (l) => l === 2000n)).value).toBe(2000n);

    await ca.quota.topUp({ apiKey: s.apiKey, idempotencyKey: "rep-topup", target: { case: "quota", value: { lines: [{ units: 100n }] } }, funding: { case: "fromWallet", value: {} } });
    expect((await within(1000, limitOnB, (l) => l === 2100n)).value).toBe(2100n);
    const wallet = await cb.quota.getLimits({ apiKey: s.apiKey });
    expect(wallet.wallets.find((w) => w.kind === "prepaid")!.balance!.units).toBe(4n);

    const k = await addKey(ca, s.accountId, s.subscriptionId);
    expect((await check(cb, k.apiKey)).decision).toBe(Decision.ALLOWED);
    await ca.admin.applyPlans({ document: plans(1000) }, ADMIN);
  });

  it("item 1: after B's subscriber connection is dropped, B resubscribes and still hears revocations", async () => {
    const s = await seedAccount(ca, "rep-quota");
    expect((await check(cb, s.apiKey)).decision).toBe(Decision.ALLOWED);
    // Kill only this test's subscriber connections (named after the key prefix), never other clients of the shared Redis.
    const admin = new Redis(TEST_REDIS_URL);
    try {
      const list = String(await admin.client("LIST"));
      const ids = list.split("\n").filter((l) => l.includes(`name=${a.redisPrefix}changes:subscriber`)).map((l) => /id=(\d+)/.exec(l)![1]!);
      expect(ids.length).toBeGreaterThanOrEqual(2);
      for (const id of ids) await admin.client("KILL", "ID", id);
    } finally {
      admin.disconnect();
    }
    // Let the subscriber reconnect (ioredis retries within ~1 s), then revoke.
    await new Promise((r) => setTimeout(r, 1500));
    await ca.admin.revokeApiKey({ keyId: s.keyId }, ADMIN);
    const r = await within(1000, () => check(cb, s.apiKey), (x) => x.reason === DenyReason.KEY_REVOKED);
    expect(r.value.reason).toBe(DenyReason.KEY_REVOKED);
  });

  it("item 2: 80 concurrent TopUps (20 keys x 4 repeats) across both replicas from a wallet covering 15: every repeat gets its first attempt's answer", async () => {
    const s = await seedAccount(ca, "rep-quota");
    await deposit(ca, s.accountId, "prepaid", 15n);
    const buy = (c: Clients, key: string) =>
      c.quota
        .topUp({ apiKey: s.apiKey, idempotencyKey: key, target: { case: "quota", value: { lines: [{ units: 100n }] } }, funding: { case: "fromWallet", value: {} } })
        .then(
          (r) => ({ key, outcome: `OK ${r.transactionId}` }),
          (e) => ({ key, outcome: `${codeOf(e)} ${String((e as ServiceError).metadata?.get("x-error-reason")[0] ?? "")} ${messageOf(e).replace(/\d+(\.\d+)? USD available/, "")}` }),
        );
    const calls = [];
    for (let repeat = 0; repeat < 4; repeat++) for (let k = 0; k < 20; k++) calls.push(buy(repeat % 2 ? cb : ca, `rep-key-${k}`));
    const results = await Promise.all(calls);
    const byKey = new Map<string, Set<string>>();
    for (const r of results) {
      if (r.outcome.startsWith(`${status.ABORTED} IDEMPOTENCY_IN_PROGRESS`)) continue; // retryable: never a different answer
      if (!byKey.has(r.key)) byKey.set(r.key, new Set());
      byKey.get(r.key)!.add(r.outcome);
    }
    const mixed = [...byKey].filter(([, outcomes]) => outcomes.size > 1);
    expect(mixed, JSON.stringify(mixed.map(([k, o]) => [k, [...o]]))).toEqual([]);
    const applied = [...byKey.values()].filter((o) => [...o][0]!.startsWith("OK")).length;
    expect(applied).toBe(15);
    for (const o of byKey.values()) {
      const v = [...o][0]!;
      if (!v.startsWith("OK")) expect(v).toMatch(new RegExp(`^${status.FAILED_PRECONDITION} INSUFFICIENT_BALANCE`));
    }
    const db = new pg.Client({ connectionString: a.databaseUrl });
    await db.connect();
    try {
      const wallet = (await db.query("select balance::text as b from wallets where account_id = $1 and kind = 'prepaid'", [s.accountId])).rows[0] as { b: string };
      const purchases = (await db.query("select count(*)::int as n from ledger_transactions where account_id = $1 and type = 'quota_purchase'", [s.accountId])).rows[0] as { n: number };
      expect(BigInt(wallet.b)).toBe(0n);
      expect(purchases.n).toBe(15);
    } finally {
      await db.end();
    }
  }, 90_000);

  it("item 6: server reflection lists grpc.health.v1.Health, and `buf curl .../grpc.health.v1.Health/Check` answers from reflection alone", async () => {
    const buf = `${REPO_ROOT}node_modules/.bin/buf`;
    const base = `http://127.0.0.1:${a.grpcPort}`;
    const list = await run(buf, ["curl", "--list-services", "--protocol", "grpc", "--http2-prior-knowledge", base], { timeout: 20_000, cwd: REPO_ROOT });
    expect(list.stdout.split("\n").map((l) => l.trim())).toContain("grpc.health.v1.Health");
    const check = await run(buf, ["curl", "--protocol", "grpc", "--http2-prior-knowledge", "-d", "{}", `${base}/grpc.health.v1.Health/Check`], { timeout: 20_000, cwd: REPO_ROOT });
    expect(JSON.parse(check.stdout)).toEqual({ status: "SERVING" });
  }, 60_000);
});
