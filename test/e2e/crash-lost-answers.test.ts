/**
 * kill -9 with answers lost on every path, forced rather than hoped for. crash-recovery.test.ts kills a server under
 * random load, where the retry loops for lost answers may find nothing to retry; here each kind of call is made to be
 * in flight at the kill: the server's Redis goes through a TcpProxy that the test stalls, so
 * - CheckAndReserve and Release calls sent after the stall wait on Redis (nothing reached it: they never ran);
 * - TopUps commit in Postgres and then wait on their post-commit Redis capacity write (they ran: the answer is lost
 *   after the commit).
 * Then kill -9, restart on the same database and Redis key prefix, and retry every lost call with its idempotency id,
 * reservation id or idempotency key: each retry says whether the call had run (replayed), and the counters, the
 * ledger and the capacity are exact.
 */
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Outcome, ReleaseState } from "../../src/gen/quota/v1/quota_pb.ts";
import { Decision } from "../../src/gen/quota/v1/types_pb.ts";
import { ADMIN, clients, type Clients } from "../support/clients.ts";
import { TEST_REDIS_URL } from "../support/env.ts";
import { deposit, seedAccount, type Seeded } from "../support/fixtures.ts";
import { assertLedgerBalanced } from "../support/ledger.ts";
import { ServerProcess } from "../support/server-process.ts";
import { TcpProxy } from "../support/tcp-proxy.ts";

const PLANS = `
plans:
  - id: lost
    name: lost answers
    reservation: { ttl: 10m }
    limits: [{ name: monthly, kind: quota, scope: subscription, limit: 1000, period: monthly }]
    topUp: { limit: monthly, increment: 100, price: { units: 100, amount: "1.00" } }
`;
const LOST_RESERVES = 3;
const LOST_RELEASES = 3;
const LOST_TOPUPS = 2;

describe("kill -9 with an answer lost on every path", () => {
  let proxy: TcpProxy;
  let server: ServerProcess;
  let db: pg.Client;
  let seed: Seeded;

  beforeAll(async () => {
    const redis = new URL(TEST_REDIS_URL);
    proxy = await TcpProxy.start(Number(redis.port || 6379), redis.hostname);
    server = await ServerProcess.create({
      env: {
        REDIS_URL: `redis://127.0.0.1:${proxy.port}`,
        // A stalled Redis must hold the calls until the kill (within 10 s), not answer them by the fail-closed deadline.
        QUOTA_STORE_DEADLINE_MS: "10000",
        QUOTA_FLUSH_INTERVAL_MS: "600000",
        QUOTA_RECONCILE_INTERVAL_MS: "500",
        QUOTA_LOG_LEVEL: "warn",
      },
    });
    await server.start();
    db = new pg.Client({ connectionString: server.databaseUrl });
    await db.connect();
    const c = clients("grpc-js", server.ports);
    try {
      await c.admin.applyPlans({ document: PLANS }, ADMIN);
      seed = await seedAccount(c, "lost");
      await deposit(c, seed.accountId, "prepaid", 10n);
    } finally {
      c.close();
    }
  }, 60_000);
  afterAll(async () => {
    await db?.end().catch(() => {});
    await server?.cleanup();
    await proxy?.close();
  });

  it("retries every lost CheckAndReserve, Release and TopUp after the restart: each ran at most once, counters and ledger exact", { timeout: 120_000 }, async () => {
    const { apiKey, accountId } = seed;
    const c: Clients = clients("grpc-js", server.ports);
    // Before the stall: 5 answered reservations, 3 of them still open (their Releases are the ones that get lost).
    const held: string[] = [];
    for (let i = 0; i < 5; i++) {
      const a = await c.quota.checkAndReserve({ apiKey, product: "api", method: "get", idempotencyId: `warm-${i}` });
      expect(a.decision).toBe(Decision.ALLOWED);
      if (i < LOST_RELEASES) held.push(a.reservationId);
      else await c.quota.release({ reservationId: a.reservationId, outcome: Outcome.COMMIT });
    }

    proxy.stall();
    const settle = <T>(p: Promise<T>) => p.then((v) => ({ ok: true as const, v }), (e: unknown) => ({ ok: false as const, e }));
    const reserves = Array.from({ length: LOST_RESERVES }, (_, i) => settle(c.quota.checkAndReserve({ apiKey, product: "api", method: "get", idempotencyId: `lost-${i}` })));
    const releases = held.map((id) => settle(c.quota.release({ reservationId: id, outcome: Outcome.CANCEL })));
    const topUp = (i: number, client: Clients) =>
      client.quota.topUp({ apiKey, idempotencyKey: `lost-topup-${i}`, target: { case: "quota", value: { lines: [{ units: 100n }] } }, funding: { case: "fromWallet", value: {} } });
    const topUps = Array.from({ length: LOST_TOPUPS }, (_, i) => settle(topUp(i, c)));
    // The TopUps commit in Postgres, then hang on the Redis capacity write: wait for the commits (bounded).
    const purchases = async () => Number((await db.query<{ n: string }>(`select count(*) as n from ledger_transactions where account_id = $1 and type = 'quota_purchase'`, [accountId])).rows[0]!.n);
    for (let i = 0; i < 150 && (await purchases()) < LOST_TOPUPS; i++) await new Promise((r) => setTimeout(r, 50));
    expect(await purchases(), "both TopUps committed before the kill").toBe(LOST_TOPUPS);

    expect(await server.kill()).toMatchObject({ signal: "SIGKILL" });
    const lost = { reserves: await Promise.all(reserves), releases: await Promise.all(releases), topUps: await Promise.all(topUps) };
    // Every one of them lost its answer: each retry loop below has work to do.
    expect(lost.reserves.filter((r) => r.ok)).toEqual([]);
    expect(lost.releases.filter((r) => r.ok)).toEqual([]);
    expect(lost.topUps.filter((r) => r.ok)).toEqual([]);
    c.close();

    proxy.restore();
    await server.start();
    const c2 = clients("grpc-js", server.ports);
    try {
      const monthly = async () => (await c2.quota.getLimits({ apiKey })).subscriptions[0]!.limits.find((l) => l.name === "monthly")!;
      // Redis kept its data: 5 warm-up calls charged, the 3 open ones included; the lost reserves never reached it.
      expect((await monthly()).used).toBe(5n);

      let retried = 0;
      for (let i = 0; i < LOST_RESERVES; i++) {
        const a = await c2.quota.checkAndReserve({ apiKey, product: "api", method: "get", idempotencyId: `lost-${i}` });
        expect(a).toMatchObject({ decision: Decision.ALLOWED, replayed: false }); // it had not run: runs now, once
        const again = await c2.quota.checkAndReserve({ apiKey, product: "api", method: "get", idempotencyId: `lost-${i}` });
        expect(again).toMatchObject({ replayed: true, reservationId: a.reservationId });
        retried++;
      }
      for (const id of held) {
        const r = await c2.quota.release({ reservationId: id, outcome: Outcome.CANCEL });
        expect(r).toMatchObject({ replayed: false, state: ReleaseState.CANCELLED }); // it had not run: runs now
        expect(await c2.quota.release({ reservationId: id, outcome: Outcome.COMMIT })).toMatchObject({ replayed: true, state: ReleaseState.CANCELLED });
        retried++;
      }
      const committed = new Set((await db.query<{ id: string }>(`select id from ledger_transactions where account_id = $1 and type = 'quota_purchase'`, [accountId])).rows.map((r) => r.id));
      for (let i = 0; i < LOST_TOPUPS; i++) {
        const r = await topUp(i, c2);
        // It had committed before the kill: the retry replays that transaction and applies nothing more.
        expect(r.replayed).toBe(true);
        expect(committed.has(r.transactionId)).toBe(true);
        retried++;
      }
      expect(retried).toBe(LOST_RESERVES + LOST_RELEASES + LOST_TOPUPS);

      // The TopUps' capacity writes were lost with the server: Redis still has the old capacity until the restarted
      // server's reconciler (every 500 ms here) rewrites it — the repair test/integration/reconcile.test.ts pins down.
      let m = await monthly();
      for (let i = 0; i < 100 && m.limit !== 1200n; i++) {
        await new Promise((r) => setTimeout(r, 100));
        m = await monthly();
      }
      // Counters: 5 warm-up - 3 cancelled + 3 retried reserves = 5 used; capacity 1000 + 2 x 100 from the TopUps.
      expect(m).toMatchObject({ used: 5n, limit: 1200n });
      expect(await purchases()).toBe(LOST_TOPUPS);
      const wallet = (await c2.quota.getLimits({ apiKey })).wallets.find((w) => w.kind === "prepaid")!;
      expect(wallet.balance!.units).toBe(8n);
      await assertLedgerBalanced(server.databaseUrl);
    } finally {
      c2.close();
    }
  });
});
