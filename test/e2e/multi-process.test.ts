/**
 * Exactness across processes: two server processes share one Redis and one Postgres; four client processes fire
 * at once, spreading their calls over both servers. For quota, rate, concurrency and budget limits exactly
 * min(N, L) calls are admitted; 1,000 concurrent TopUps carrying 100 idempotency keys apply exactly 100 times.
 */
import { spawn } from "node:child_process";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ADMIN, clients, type Clients } from "../support/clients.ts";
import { deposit, seedAccount } from "../support/fixtures.ts";
import type { LoadJob, LoadResult } from "../support/load-worker.ts";
import { REPO_ROOT, ServerProcess } from "../support/server-process.ts";

const PLANS = `
plans:
  - id: mp-quota
    name: quota 100
    limits: [{ name: monthly, kind: quota, limit: 100, period: monthly }]
  - id: mp-rate
    name: rate 50 per hour
    limits: [{ name: hourly, kind: rate, scope: key, limit: 50, window: 1h }]
  - id: mp-concurrency
    name: 10 in flight
    reservation: { ttl: 10m }
    limits: [{ name: in-flight, kind: concurrency, scope: subscription, limit: 10 }]
  - id: mp-budget
    name: budget
    limits: [{ name: credit, kind: budget, scope: account }]
    pricing: { perCall: "0.01" }
  - id: mp-wallet
    name: wallet buys quota
    limits: [{ name: monthly, kind: quota, limit: 10, period: monthly }]
    topUp: { limit: monthly, increment: 100, price: { units: 100, amount: "1.00" } }
`;
const WORKERS = 4;

function runWorkers(jobs: LoadJob[]): Promise<LoadResult[]> {
  return Promise.all(
    jobs.map(
      (job) =>
        new Promise<LoadResult>((resolve, reject) => {
          const child = spawn(process.execPath, ["test/support/load-worker.ts", JSON.stringify(job)], { cwd: REPO_ROOT, stdio: ["ignore", "pipe", "pipe"] });
          let out = "";
          let err = "";
          child.stdout.on("data", (d) => (out += d));
          child.stderr.on("data", (d) => (err += d));
          const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
          child.on("close", (code) => {
            clearTimeout(timer);
            if (code !== 0) reject(new Error(`worker exited ${code}: ${err}`));
            else resolve(JSON.parse(out.trim().split("\n").pop()!) as LoadResult);
          });
        }),
    ),
  );
}

describe("exactness with 2 server processes and 4 client processes", () => {
  let a: ServerProcess;
  let b: ServerProcess;
  let c: Clients;
  beforeAll(async () => {
    a = await ServerProcess.create({ env: { QUOTA_LOG_LEVEL: "warn", QUOTA_STORE_DEADLINE_MS: "5000" } });
    b = await ServerProcess.sibling(a);
    await a.start();
    await b.start();
    c = clients("grpc-js", a.ports);
    await c.admin.applyPlans({ document: PLANS }, ADMIN);
  }, 60_000);
  afterAll(async () => {
    c?.close();
    await b?.cleanup();
    await a?.cleanup();
  });

  const servers = () => [a.ports, b.ports];
  const fire = (calls: LoadJob["calls"], protocol: LoadJob["protocol"] = "grpc-js") => {
    const startAt = Date.now() + 2000;
    return runWorkers(Array.from({ length: WORKERS }, (_, i) => ({ servers: i % 2 ? servers().reverse() : servers(), protocol: i % 2 ? "connect" : protocol, startAt, calls })));
  };
  const sum = (rs: LoadResult[], f: (r: LoadResult) => number) => rs.reduce((s, r) => s + f(r), 0);

  for (const [plan, limit, perWorker, extra] of [
    ["mp-quota", 100, 100, {}],
    ["mp-rate", 50, 50, {}],
    ["mp-concurrency", 10, 50, {}],
    ["mp-budget", 100, 75, {}],
  ] as const) {
    it(`${plan}: admits exactly min(N, L) = ${Math.min(limit, perWorker * WORKERS)} of N = ${perWorker * WORKERS}`, async () => {
      const s = await seedAccount(c, plan);
      if (plan === "mp-budget") await deposit(c, s.accountId, "credit", 1n); // $1 at $0.01 a call = 100 calls
      const results = await fire({ kind: "reserve", count: perWorker, apiKey: s.apiKey, product: "api", method: "get", ...extra });
      expect(sum(results, (r) => Object.keys(r.errors).length)).toBe(0);
      expect(sum(results, (r) => r.allowed)).toBe(Math.min(limit, perWorker * WORKERS));
      const view = await c.quota.getLimits({ apiKey: s.apiKey });
      const status = view.subscriptions[0]!.limits[0]!;
      expect(status.used).toBe(BigInt(plan === "mp-budget" ? 1_000_000 : limit));
    }, 90_000);
  }

  it("applies 1,000 concurrent TopUps with 100 idempotency keys exactly 100 times; the wallet never goes negative", async () => {
    const s = await seedAccount(c, "mp-wallet");
    await deposit(c, s.accountId, "prepaid", 250n);
    const results = await fire({ kind: "topup", count: 250, apiKey: s.apiKey, keyPrefix: "mp", distinctKeys: 100, units: "100" });
    expect(sum(results, (r) => Object.keys(r.errors).length), JSON.stringify(results.map((r) => r.errors))).toBe(0);
    expect(sum(results, (r) => r.applied)).toBe(100);
    expect(sum(results, (r) => r.replayed)).toBe(900);

    const db = new pg.Client({ connectionString: a.databaseUrl });
    await db.connect();
    try {
      const wallet = (await db.query("select balance::text as b from wallets where account_id = $1 and kind = 'prepaid'", [s.accountId])).rows[0] as { b: string };
      const postings = (await db.query("select coalesce(sum(amount), 0)::text as s from ledger_postings where ledger_account = $1", [`wallet:${s.accountId}:prepaid`])).rows[0] as { s: string };
      const all = (await db.query("select currency, sum(amount)::text as s from ledger_postings group by currency")).rows as Array<{ s: string }>;
      const purchases = (await db.query("select count(*)::int as n from ledger_transactions where account_id = $1 and type = 'quota_purchase'", [s.accountId])).rows[0] as { n: number };
      expect(BigInt(wallet.b)).toBe(150_000_000n); // $250 - 100 x $1
      expect(BigInt(postings.s)).toBe(BigInt(wallet.b)); // the cached balance equals the sum of its postings
      expect(all.every((r) => BigInt(r.s) === 0n)).toBe(true); // postings sum to zero per currency
      expect(purchases.n).toBe(100);
    } finally {
      await db.end();
    }
    const view = await c.quota.getLimits({ apiKey: s.apiKey });
    expect(view.subscriptions[0]!.limits[0]!.limit).toBe(10n + 100n * 100n);
  }, 90_000);
});
