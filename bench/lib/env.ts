/**
 * The bench's private world: its own redis-server on a free port (the shared one is noisy), a fresh Postgres
 * database, the plans, accounts and keys bulk-inserted in SQL (100,000 accounts in seconds instead of through the
 * admin API), and the real server as a child process (`src/cli/main.ts serve`).
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import * as net from "node:net";
import { fileURLToPath } from "node:url";
import { dirname } from "node:path";
import pg from "pg";
import { Redis } from "ioredis";

export const ROOT = fileURLToPath(new URL("../..", import.meta.url));
export const ADMIN_TOKEN = "bench-admin-token-0123456789";
export const SERVICE_TOKEN = "bench-service-token";
const PG_URL = process.env.TEST_DATABASE_URL ?? "postgresql://postgres@127.0.0.1:5432/postgres";

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

const children = new Set<ChildProcess>();
process.once("exit", () => {
  for (const c of children) c.kill("SIGKILL");
});

/** Spawns a child that the bench kills on exit whatever happens. */
export function track(child: ChildProcess): ChildProcess {
  children.add(child);
  child.once("exit", () => children.delete(child));
  return child;
}

export async function waitFor(what: string, probe: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await probe().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`${what} did not come up within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export interface PrivateRedis {
  port: number;
  url: string;
  pid: number;
  client: Redis;
  stop(): Promise<void>;
}

export async function startRedis(): Promise<PrivateRedis> {
  const port = await freePort();
  const child = track(spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: "ignore" }));
  const client = new Redis(port, "127.0.0.1", { lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: () => 100 });
  client.on("error", () => {});
  await waitFor("redis-server", async () => {
    if (client.status !== "ready") await client.connect().catch(() => {});
    return (await client.ping()) === "PONG";
  });
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    pid: child.pid!,
    client,
    stop: async () => {
      client.disconnect();
      child.kill("SIGKILL");
    },
  };
}

/** INFO fields as numbers: used_cpu_user/sys, and per command calls/usec. */
export async function redisCounters(r: Redis): Promise<{ cpu: number; commands: Record<string, { calls: number; usec: number }> }> {
  const info = await r.info("all");
  let cpu = 0;
  const commands: Record<string, { calls: number; usec: number }> = {};
  for (const line of info.split("\r\n")) {
    if (line.startsWith("used_cpu_user:") || line.startsWith("used_cpu_sys:")) cpu += Number(line.split(":")[1]);
    const m = /^cmdstat_([^:]+):calls=(\d+),usec=(\d+)/.exec(line);
    if (m) commands[m[1]!] = { calls: Number(m[2]), usec: Number(m[3]) };
  }
  return { cpu, commands };
}

export interface Database {
  url: string;
  drop(): Promise<void>;
}

export async function createDatabase(): Promise<Database> {
  const name = `qa_bench_${process.pid}_${Date.now().toString(36)}`;
  const admin = new pg.Client({ connectionString: PG_URL });
  await admin.connect();
  await admin.query(`create database ${name}`);
  await admin.end();
  const url = new URL(PG_URL);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    drop: async () => {
      const c = new pg.Client({ connectionString: PG_URL });
      await c.connect();
      await c.query(`drop database if exists ${name} with (force)`);
      await c.end();
    },
  };
}

/** The bench plans: the same 3-limit shape as issue 8 (monthly quota, per-key rate, per-key concurrency), plus 1 and
 * 6 limits for the cost curve, and "lq1" (one quota) for the lease path. Limits are high: the bench measures admitted calls, not denials. */
export const PLANS = `
plans:
  - id: l1
    name: one limit
    methods: { default: 10 }
    limits:
      - { name: monthly, kind: quota, limit: 1000000000000, period: monthly }
  - id: l3
    name: three limits
    methods: { default: 10 }
    limits:
      - { name: monthly, kind: quota, limit: 1000000000000, period: monthly }
      - { name: rps, kind: rate, scope: key, limit: 1000000, window: 1s }
      - { name: in-flight, kind: concurrency, scope: key, limit: 1000000 }
  - id: l6
    name: six limits
    methods: { default: 10 }
    limits:
      - { name: monthly, kind: quota, limit: 1000000000000, period: monthly }
      - { name: daily, kind: quota, limit: 1000000000000, period: daily }
      - { name: rps, kind: rate, scope: key, limit: 1000000, window: 1s }
      - { name: rpm, kind: rate, scope: key, limit: 100000000, window: 1m }
      - { name: in-flight, kind: concurrency, scope: key, limit: 1000000 }
      - { name: sub-in-flight, kind: concurrency, scope: subscription, limit: 1000000 }
  # Scenario (f), leases: only a quota (leases refuse rate and concurrency limits: LEASE_REMOTE_ONLY).
  - id: lq1
    name: one quota, leasable
    methods: { default: 10 }
    limits:
      - { name: monthly, kind: quota, limit: 1000000000000, period: monthly }
`;

const B32 = "abcdefghijklmnopqrstuvwxyz234567";

/**
 * Inserts `count` accounts on `planId`, one subscription and one API key each, straight into the tables (the same
 * rows AdminService writes: account, two empty wallets, an active subscription, an active key with the SHA-256 of
 * its secret). Returns the API keys. Accounts start with no Redis state: the first call restores them.
 */
export async function seedAccounts(databaseUrl: string, planId: string, count: number, tag: string): Promise<string[]> {
  const c = new pg.Client({ connectionString: databaseUrl });
  await c.connect();
  const apiKeys: string[] = [];
  const startsAt = new Date(Date.now() - 86_400_000);
  try {
    for (let from = 0; from < count; from += 10_000) {
      const n = Math.min(10_000, count - from);
      const ids: string[] = [], subs: string[] = [], keyIds: string[] = [], hashes: string[] = [];
      for (let i = 0; i < n; i++) {
        const id = `${tag}-${from + i}`;
        const bytes = randomBytes(16);
        const keyId = Array.from(bytes, (b) => B32[b & 31]).join("");
        const secret = randomBytes(32).toString("base64url");
        ids.push(id);
        subs.push(`sub_${id}`);
        keyIds.push(keyId);
        hashes.push(createHash("sha256").update(secret).digest("hex"));
        apiKeys.push(`qa_${keyId}_${secret}`);
      }
      await c.query("begin");
      await c.query(`insert into accounts (id, name, created_at, capacity_version, capacity_synced) select x, x, now(), 0, 0 from unnest($1::text[]) x`, [ids]);
      await c.query(
        `insert into wallets (account_id, kind, balance, total_deposited, spent_posted, updated_at)
         select x, k, 0, 0, 0, now() from unnest($1::text[]) x cross join (values ('prepaid'), ('credit')) v(k)`,
        [ids],
      );
      await c.query(
        `insert into subscriptions (id, account_id, plan_id, starts_at, ends_at, access_blocks, add_ons, status, created_at)
         select s, a, $3, $4, null, '[]', '{}', 'active', now() from unnest($1::text[], $2::text[]) as t(s, a)`,
        [subs, ids, planId, startsAt],
      );
      await c.query(
        `insert into api_keys (id, account_id, subscription_id, name, secret_hash, status, owner, overage, sub_limits, expires_at, created_at, revoked_at)
         select k, a, s, 'bench', h, 'active', false, false, '{}', null, now(), null from unnest($1::text[], $2::text[], $3::text[], $4::text[]) as t(k, a, s, h)`,
        [keyIds, ids, subs, hashes],
      );
      await c.query("commit");
    }
  } finally {
    await c.end();
  }
  return apiKeys;
}

export interface ServerHandle {
  pid: number;
  grpcPort: number;
  httpPort: number;
  stop(): Promise<number | null>;
}

/** Starts the server as users do, `bin/quota-authority serve`, on this process's Node (`nodeArgs`, e.g. --cpu-prof,
 * go in NODE_OPTIONS), and waits for /readyz. */
export async function startServer(opts: { databaseUrl: string; redisUrl: string; env?: Record<string, string>; nodeArgs?: string[] }): Promise<ServerHandle> {
  const grpcPort = await freePort();
  let httpPort = await freePort();
  while (httpPort === grpcPort) httpPort = await freePort();
  const plansFile = `${ROOT}bench/results/.plans.yaml`;
  writeFileSync(plansFile, PLANS);
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith("QUOTA_") && k !== "DATABASE_URL" && k !== "REDIS_URL" && k !== "NODE_OPTIONS") env[k] = v;
  Object.assign(env, {
    QUOTA_HOST: "127.0.0.1",
    QUOTA_GRPC_PORT: String(grpcPort),
    QUOTA_HTTP_PORT: String(httpPort),
    // Empty URLs: the embedded default (PGlite in memory, in-process counters).
    ...(opts.databaseUrl ? { DATABASE_URL: opts.databaseUrl } : { QUOTA_DATA_DIR: "memory://" }),
    ...(opts.redisUrl ? { REDIS_URL: opts.redisUrl } : {}),
    QUOTA_REDIS_KEY_PREFIX: "qa:",
    QUOTA_ADMIN_TOKEN: ADMIN_TOKEN,
    QUOTA_SERVICE_TOKEN: SERVICE_TOKEN,
    QUOTA_LOG_LEVEL: "warn",
    QUOTA_PLANS_FILE: plansFile,
    QUOTA_SHUTDOWN_DELAY_MS: "0",
    ...opts.env,
  });
  const workers = Number(env.QUOTA_WORKERS ?? 1);
  // With workers, /readyz answers once the first one serves: wait for the primary's "all workers serving" (info).
  if (workers > 1) env.QUOTA_LOG_LEVEL = "info";
  if (opts.nodeArgs?.length) env.NODE_OPTIONS = opts.nodeArgs.join(" ");
  // This Node first on PATH, so the launcher's scripts/node runs it; each step `exec`s, so the pid is the server's.
  env.PATH = `${dirname(process.execPath)}:${env.PATH ?? ""}`;
  const child = track(spawn("sh", ["bin/quota-authority", "serve"], { cwd: ROOT, env, stdio: ["ignore", "pipe", "pipe"] }));
  let stderr = "";
  let allServing = workers === 1;
  child.stderr!.on("data", (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  child.stdout!.on("data", (d: Buffer) => {
    if (d.toString().includes('"msg":"all workers serving"')) allServing = true;
  });
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  await waitFor("server", async () => {
    if (child.exitCode !== null) throw new Error(`server exited: ${stderr}`);
    const r = await fetch(`http://127.0.0.1:${httpPort}/readyz`, { headers: { connection: "close" }, signal: AbortSignal.timeout(1000) });
    await r.text();
    return r.status === 200 && allServing;
  }, 120_000);
  return {
    pid: child.pid!,
    grpcPort,
    httpPort,
    stop: async () => {
      child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), 15_000);
      const code = await exited;
      clearTimeout(t);
      return code;
    },
  };
}

export function which(cmd: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${cmd}`], { stdio: "ignore" }).status === 0;
}

/** Finds a Debian tool, or installs its package with apt-get when running as root (apt-get update first, once). */
let aptUpdated = false;
export function ensureTool(cmd: string, pkg: string): boolean {
  if (which(cmd)) return true;
  if (process.getuid?.() !== 0) return false;
  const opts = { stdio: "ignore" as const, env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" } };
  if (!aptUpdated) {
    spawnSync("apt-get", ["update", "-q"], opts);
    aptUpdated = true;
  }
  spawnSync("apt-get", ["install", "-y", "-q", pkg], opts);
  return which(cmd);
}

/** Seeds through the admin API (the embedded default has its database inside the server process). */
export async function seedViaAdmin(grpcPort: number, httpPort: number, planId: string, count: number, tag: string): Promise<string[]> {
  const { clients } = await import("../../test/support/clients.ts");
  const c = clients("grpc-js", { grpc: grpcPort, http: httpPort });
  const admin = { authorization: `Bearer ${ADMIN_TOKEN}` };
  const out: string[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const id = `${tag}-${i}`;
      await c.admin.createAccount({ id, name: id }, admin);
      const sub = await c.admin.createSubscription({ accountId: id, planId }, admin);
      const key = await c.admin.createApiKey({ accountId: id, subscriptionId: sub.subscription!.id, name: "bench" }, admin);
      out.push(key.apiKey);
    }
  } finally {
    c.close();
  }
  return out;
}
