/**
 * TopUp exactness: parallel wallet-funded purchases, idempotency, ledger balance, typed errors that change nothing.
 */
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { status } from "@grpc/grpc-js";
import { startTestApp, type TestApp } from "../support/app.ts";
import { ADMIN, clients, codeOf, messageOf, type Clients } from "../support/clients.ts";
import { applyPlans, deposit, seedAccount } from "../support/fixtures.ts";
import { assertLedgerBalanced } from "../support/ledger.ts";

const PLANS = `
plans:
  - id: wallet-quota
    name: Wallet-funded quota
    limits:
      - { name: monthly, kind: quota, limit: 1000, period: monthly }
    topUp: { limit: monthly, increment: 100, price: { units: 100, amount: "1.00" } }
`;

describe("TopUp (gRPC, Postgres, Redis)", () => {
  let t: TestApp;
  let c: Clients;
  beforeAll(async () => {
    t = await startTestApp({ clock: false });
    c = clients("grpc-js", { grpc: t.app.grpcPort, http: t.app.httpPort });
    await applyPlans(c, PLANS);
  });
  afterAll(async () => {
    c?.close();
    await t?.stop();
  });

  it("50 parallel purchases drain a $10 wallet exactly: 10 applied, never negative, postings balance, each key once", async () => {
    const s = await seedAccount(c, "wallet-quota");
    await deposit(c, s.accountId, "prepaid", 10n);
    const buy = (i: number) =>
      c.quota
        .topUp({ apiKey: s.apiKey, idempotencyKey: `buy-${i}`, target: { case: "quota", value: { lines: [{ units: 100n }] } }, funding: { case: "fromWallet", value: {} } })
        .then((r) => ({ ok: true as const, r }), (e) => ({ ok: false as const, code: codeOf(e), msg: messageOf(e) }));
    const results = await Promise.all(Array.from({ length: 50 }, (_, i) => buy(i)));
    const ok = results.filter((r) => r.ok);
    const failed = results.filter((r) => !r.ok);
    expect(ok).toHaveLength(10);
    expect(failed).toHaveLength(40);
    for (const f of failed) {
      expect(f.code).toBe(status.FAILED_PRECONDITION);
      expect(f.msg).toMatch(/insufficient wallet balance/);
    }
    const balances = ok.map((r) => (r.ok ? r.r.newBalance!.units : -1n));
    expect(balances.every((b) => b >= 0n)).toBe(true);
    expect([...balances].sort((a, b) => Number(a - b))).toEqual([0n, 1n, 2n, 3n, 4n, 5n, 6n, 7n, 8n, 9n]);

    // Retrying every key applies nothing more: the successful ones replay their first answer.
    const again = await Promise.all(Array.from({ length: 50 }, (_, i) => buy(i)));
    const replays = again.filter((r) => r.ok && r.r.replayed);
    expect(replays).toHaveLength(10);

    const limits = await c.quota.getLimits({ apiKey: s.apiKey });
    expect(limits.wallets.find((w) => w.kind === "prepaid")!.balance!.units).toBe(0n);
    const monthly = limits.subscriptions[0]!.limits.find((l) => l.name === "monthly")!;
    expect(monthly.limit).toBe(2000n);
    expect(limits.grants).toHaveLength(10);

    await assertLedgerBalanced(t.databaseUrl); // per transaction and currency; cached balances = postings
    const wallet = (await t.app.db.postingTotals()).find((x) => x.ledgerAccount === `wallet:${s.accountId}:prepaid`)!;
    expect(wallet.total).toBe(0n); // +10 deposited, -10 spent
    const ledger = await c.admin.listLedger({ accountId: s.accountId }, ADMIN);
    expect(ledger.transactions.filter((x) => x.type === "quota_purchase")).toHaveLength(10);
  });

  it("rejects bad amounts by field name and changes nothing", async () => {
    const s = await seedAccount(c, "wallet-quota");
    await deposit(c, s.accountId, "prepaid", 5n);
    const attempts: Array<[string, object]> = [
      ["quota.lines[0].units", { lines: [{ units: -100n }] }],
      ["quota.lines[0].units", { lines: [{ units: 0n }] }],
      ["quota.lines[0].units", { lines: [{ units: 150n }] }],
      ["quota.lines[0].amount", { lines: [{ amount: { units: 0n, nanos: 0 } }] }],
      ["quota.lines[0].amount", { lines: [{ amount: { units: -1n, nanos: 0 } }] }],
      ["quota.lines[0].amount.nanos", { lines: [{ amount: { units: 1n, nanos: 500 } }] }],
      ["quota.lines[0].amount.currency_code", { lines: [{ amount: { currencyCode: "EUR", units: 1n, nanos: 0 } }] }],
      ["quota.lines", { lines: [] }],
    ];
    for (const [field, value] of attempts) {
      const err = await c.quota
        .topUp({ apiKey: s.apiKey, idempotencyKey: `bad-${field}-${JSON.stringify(value, (_k, v) => (typeof v === "bigint" ? String(v) : v))}`.slice(0, 100).replace(/[^A-Za-z0-9_.:~-]/g, "_"), target: { case: "quota", value: value as never }, funding: { case: "fromWallet", value: {} } })
        .then(() => undefined, (e) => e);
      expect(codeOf(err), field).toBe(status.INVALID_ARGUMENT);
      expect(messageOf(err), field).toContain(field);
    }
    const tooMuch = await c.quota
      .topUp({ apiKey: s.apiKey, idempotencyKey: "too-much", target: { case: "quota", value: { lines: [{ units: 600n }] } }, funding: { case: "fromWallet", value: {} } })
      .then(() => undefined, (e) => e);
    expect(codeOf(tooMuch)).toBe(status.FAILED_PRECONDITION);
    const limits = await c.quota.getLimits({ apiKey: s.apiKey });
    expect(limits.wallets.find((w) => w.kind === "prepaid")!.balance!.units).toBe(5n);
    expect(limits.grants).toHaveLength(0);
    const ledger = await c.admin.listLedger({ accountId: s.accountId }, ADMIN);
    expect(ledger.transactions.map((x) => x.type)).toEqual(["deposit"]);
  });

  it("mixes wallet deposits, credit deposits and purchases on one account without deadlocks", async () => {
    const s = await seedAccount(c, "wallet-quota");
    await deposit(c, s.accountId, "prepaid", 20n);
    const ops = Array.from({ length: 60 }, (_, i) => {
      const kind = i % 3;
      if (kind === 0) {
        return c.quota.topUp({ apiKey: s.apiKey, idempotencyKey: `mix-buy-${i}`, target: { case: "quota", value: { lines: [{ units: 100n }] } }, funding: { case: "fromWallet", value: {} } });
      }
      const wallet = kind === 1 ? "wallet" : "credit";
      return c.quota.topUp({
        accountId: s.accountId,
        idempotencyKey: `mix-dep-${i}`,
        target: { case: wallet, value: { amount: { units: 1n } } },
        funding: { case: "external", value: { reference: `mix-ref-${s.accountId}-${i}`, amount: { units: 1n }, provider: "test" } },
      });
    });
    const results = await Promise.all(ops.map((p) => p.then(() => "ok", (e) => String(codeOf(e)))));
    expect(results.filter((r) => r !== "ok")).toEqual([]);
    const view = await c.quota.getLimits({ apiKey: s.apiKey });
    expect(view.wallets.find((w) => w.kind === "prepaid")!.balance!.units).toBe(20n + 20n - 20n); // +20 deposits, -20 purchases
    expect(view.wallets.find((w) => w.kind === "credit")!.balance!.units).toBe(20n);
    await assertLedgerBalanced(t.databaseUrl);
  });

  it("reusing an idempotency key for a different request is INVALID_ARGUMENT", async () => {
    const s = await seedAccount(c, "wallet-quota");
    await deposit(c, s.accountId, "prepaid", 5n);
    const first = await c.quota.topUp({ apiKey: s.apiKey, idempotencyKey: "k1", target: { case: "quota", value: { lines: [{ units: 100n }] } }, funding: { case: "fromWallet", value: {} } });
    expect(first.replayed).toBe(false);
    const err = await c.quota
      .topUp({ apiKey: s.apiKey, idempotencyKey: "k1", target: { case: "quota", value: { lines: [{ units: 200n }] } }, funding: { case: "fromWallet", value: {} } })
      .then(() => undefined, (e) => e);
    expect(codeOf(err)).toBe(status.INVALID_ARGUMENT);
    expect(messageOf(err)).toMatch(/idempotency_key/);
  });

  it("the ledger check fails on two unbalanced transactions that cancel each other out", async () => {
    // The shared check must catch what a global (or per-currency) sum cannot: +1 / -1 imbalance in two transactions.
    const db = new pg.Client({ connectionString: t.databaseUrl });
    await db.connect();
    const tx = [`tx_test_unbalanced_a_${Date.now()}`, `tx_test_unbalanced_b_${Date.now()}`];
    try {
      await db.query(`insert into ledger_transactions (id, account_id, type, description) values ($1, 'nobody', 'adjustment', 'test'), ($2, 'nobody', 'adjustment', 'test')`, tx);
      await db.query(
        `insert into ledger_postings (id, transaction_id, ledger_account, currency, amount) values
           ($1 || ':1', $1, 'x:a', 'USD', 5), ($1 || ':2', $1, 'x:b', 'USD', -4),
           ($2 || ':1', $2, 'x:a', 'USD', -5), ($2 || ':2', $2, 'x:b', 'USD', 4)`,
        tx,
      );
      expect((await t.app.db.postingTotals()).filter((x) => x.ledgerAccount.startsWith("x:")).every((x) => x.total === 0n)).toBe(true);
      await expect(assertLedgerBalanced(t.databaseUrl)).rejects.toThrow(/do not sum to zero/);
    } finally {
      await db.query(`delete from ledger_postings where transaction_id = any($1)`, [tx]);
      await db.query(`delete from ledger_transactions where id = any($1)`, [tx]);
      await db.end();
    }
  });
});
