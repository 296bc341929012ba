/**
 * Postgres unreachable: the hot path keeps working from the key cache; TopUp and admin calls answer UNAVAILABLE;
 * nothing is half-applied, and everything works again when Postgres returns.
 */
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Outcome } from "../../src/gen/quota/v1/quota_pb.ts";
import { Decision } from "../../src/gen/quota/v1/types_pb.ts";
import { startTestApp, type TestApp } from "../support/app.ts";
import { ADMIN, clients, codeOf, type Clients } from "../support/clients.ts";
import { applyPlans, deposit, seedAccount } from "../support/fixtures.ts";
import { TEST_DATABASE_URL } from "../support/env.ts";
import { assertLedgerBalanced } from "../support/ledger.ts";
import { TcpProxy } from "../support/tcp-proxy.ts";

const PLANS = `
plans:
  - id: pg-fault
    name: Postgres fault plan
    limits: [{ name: monthly, kind: quota, limit: 1000, period: monthly }]
    topUp: { limit: monthly, increment: 100, price: { units: 100, amount: "1.00" } }
`;

describe("Postgres unreachable", () => {
  let proxy: TcpProxy;
  let t: TestApp;
  let c: Clients;
  beforeAll(async () => {
    // The proxy forwards to wherever the test database really is (TEST_DATABASE_URL), not to a fixed port.
    const target = new URL(TEST_DATABASE_URL);
    proxy = await TcpProxy.start(Number(target.port || 5432), target.hostname);
    t = await startTestApp({
      clock: false,
      wrapDatabaseUrl: (url) => {
        const u = new URL(url);
        u.port = String(proxy.port);
        return u.toString();
      },
    });
    c = clients("grpc-js", { grpc: t.app.grpcPort, http: t.app.httpPort });
    await applyPlans(c, PLANS);
  });
  afterAll(async () => {
    c?.close();
    proxy?.restore();
    await t?.stop();
    await proxy?.close();
  });

  it("keeps CheckAndReserve and Release working, refuses TopUp and admin with UNAVAILABLE, and recovers", async () => {
    const s = await seedAccount(c, "pg-fault");
    await deposit(c, s.accountId, "prepaid", 5n);
    const call = () => c.quota.checkAndReserve({ apiKey: s.apiKey, product: "api", method: "get" });
    expect((await call()).decision).toBe(Decision.ALLOWED); // warms the key cache

    proxy.cut();
    for (let i = 0; i < 5; i++) {
      const a = await call();
      expect(a.decision).toBe(Decision.ALLOWED);
      const r = await c.quota.release({ reservationId: a.reservationId, outcome: Outcome.COMMIT });
      expect(r.replayed).toBe(false);
    }
    const topUp = () =>
      c.quota.topUp({ apiKey: s.apiKey, idempotencyKey: "during-outage", target: { case: "quota", value: { lines: [{ units: 100n }] } }, funding: { case: "fromWallet", value: {} } });
    expect(codeOf(await topUp().then(() => undefined, (e) => e))).toBe(status.UNAVAILABLE);
    expect(codeOf(await c.admin.createAccount({ name: "during outage" }, ADMIN).then(() => undefined, (e) => e))).toBe(status.UNAVAILABLE);

    proxy.restore();
    let applied;
    for (let i = 0; i < 50 && !applied; i++) {
      applied = await topUp().catch(() => undefined);
      if (!applied) await new Promise((r) => setTimeout(r, 200));
    }
    expect(applied).toBeDefined();
    expect(applied!.newBalance!.units).toBe(4n);
    const limits = await c.quota.getLimits({ apiKey: s.apiKey });
    const monthly = limits.subscriptions[0]!.limits.find((l) => l.name === "monthly")!;
    expect(monthly.used).toBe(6n);
    expect(monthly.limit).toBe(1100n);
    const ledger = await c.admin.listLedger({ accountId: s.accountId }, ADMIN);
    expect(ledger.transactions.map((x) => x.type).sort()).toEqual(["deposit", "quota_purchase"]);
    await assertLedgerBalanced(t.databaseUrl);
  });
});
