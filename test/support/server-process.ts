/**
 * The real server as a child process (`node src/cli/main.ts serve`), for e2e tests: its own free ports, its own
 * Postgres database and Redis key prefix, captured stdout/stderr, and the three ways a process ends — SIGTERM
 * (graceful `stop()`), SIGKILL (`kill()`) and exiting by itself. `start()` may be called again after the process
 * ended: the same ports, database and key prefix are reused, so restart / crash-recovery tests see the same state.
 */
import { spawn, type ChildProcess } from "node:child_process";
import * as grpc from "@grpc/grpc-js";
import { BinaryReader, BinaryWriter } from "@bufbuild/protobuf/wire";
import * as net from "node:net";
import { fileURLToPath } from "node:url";
import { createTestDatabase, deleteRedisPrefix } from "./app.ts";
import { TEST_REDIS_URL, uniqueId } from "./env.ts";

export const REPO_ROOT = fileURLToPath(new URL("../..", import.meta.url));
export const ADMIN_TOKEN = "test-admin-token";

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface ServerProcessOptions {
  /** Extra or overriding environment variables (QUOTA_*). */
  env?: Record<string, string>;
  /** Extra arguments after `serve` (e.g. `--demo`). */
  args?: string[];
  /** How long `start()` waits for `/readyz` to answer 200 (default 30 s). */
  readyTimeoutMs?: number;
}

/** A TCP port the OS considers free right now (bind port 0, read it, close). */
export async function freePort(host = "127.0.0.1"): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.once("error", reject);
    s.listen(0, host, () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

/** Environment variables that must not leak from the test runner into the server under test. */
function inheritedEnv(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v === undefined) continue;
    if (k.startsWith("QUOTA_") || k === "DATABASE_URL" || k === "REDIS_URL" || k === "NODE_OPTIONS" || k.startsWith("VITEST") || k === "NODE_ENV") continue;
    out[k] = v;
  }
  return out;
}

const live = new Set<ChildProcess>();
process.once("exit", () => {
  // The test runner is going away: never leave a server behind.
  for (const c of live) c.kill("SIGKILL");
});

export class ServerProcess {
  readonly grpcPort: number;
  readonly httpPort: number;
  readonly databaseUrl: string;
  readonly redisPrefix: string;
  /** Every line the process wrote, across restarts. */
  readonly stdout: string[] = [];
  readonly stderr: string[] = [];
  readonly #dropDatabase: () => Promise<void>;
  readonly #options: ServerProcessOptions;
  #child: ChildProcess | undefined;
  #exited: Promise<Exit> | undefined;
  #exit: Exit | undefined;
  #sibling = false;

  private constructor(ports: { grpc: number; http: number }, db: { url: string; drop: () => Promise<void> }, options: ServerProcessOptions, redisPrefix?: string) {
    this.grpcPort = ports.grpc;
    this.httpPort = ports.http;
    this.databaseUrl = db.url;
    this.#dropDatabase = db.drop;
    this.redisPrefix = redisPrefix ?? `qa-e2e:${uniqueId("")}:`;
    this.#options = options;
  }

  /** A second replica of `other`: its own ports, the same database and Redis key prefix (cleanup leaves them to
   * `other`). */
  static async sibling(other: ServerProcess, options: ServerProcessOptions = {}): Promise<ServerProcess> {
    const grpc = await freePort();
    let http = await freePort();
    while (http === grpc || http === other.httpPort || http === other.grpcPort) http = await freePort();
    const s = new ServerProcess({ grpc, http }, { url: other.databaseUrl, drop: async () => {} }, { ...other.#options, ...options }, other.redisPrefix);
    s.#sibling = true;
    return s;
  }

  /** Picks two free ports and creates a fresh database; does not start the process. */
  static async create(options: ServerProcessOptions = {}): Promise<ServerProcess> {
    const grpc = await freePort();
    let http = await freePort();
    while (http === grpc) http = await freePort();
    const db = await createTestDatabase();
    return new ServerProcess({ grpc, http }, db, options);
  }

  get ports(): { grpc: number; http: number } {
    return { grpc: this.grpcPort, http: this.httpPort };
  }

  get running(): boolean {
    return this.#child !== undefined && this.#exit === undefined;
  }

  get pid(): number | undefined {
    return this.#child?.pid;
  }

  /** The environment the process is started with. */
  env(): Record<string, string> {
    return {
      ...inheritedEnv(),
      QUOTA_HOST: "127.0.0.1",
      QUOTA_GRPC_PORT: String(this.grpcPort),
      QUOTA_HTTP_PORT: String(this.httpPort),
      DATABASE_URL: this.databaseUrl,
      REDIS_URL: TEST_REDIS_URL,
      QUOTA_REDIS_KEY_PREFIX: this.redisPrefix,
      QUOTA_ADMIN_TOKEN: ADMIN_TOKEN,
      QUOTA_LOG_LEVEL: "info",
      ...this.#options.env,
    };
  }

  /** Spawns the server and resolves once `/readyz` answers 200; rejects (with the output) if it exits or times out. */
  async start(): Promise<void> {
    if (this.running) throw new Error("server process is already running");
    this.#exit = undefined;
    const child = spawn(process.execPath, ["src/cli/main.ts", "serve", ...(this.#options.args ?? [])], {
      cwd: REPO_ROOT,
      env: this.env(),
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.#child = child;
    live.add(child);
    capture(child.stdout!, this.stdout);
    capture(child.stderr!, this.stderr);
    this.#exited = new Promise<Exit>((resolve) => {
      // "close": the process exited and its stdout/stderr are fully read (the last log lines are captured).
      child.once("close", (code, signal) => {
        this.#exit = { code, signal };
        live.delete(child);
        resolve(this.#exit);
      });
    });
    // A spawn failure (e.g. ENOENT) is reported as an exit.
    child.once("error", (e) => this.stderr.push(`spawn error: ${e.message}`));

    const deadline = Date.now() + (this.#options.readyTimeoutMs ?? 30_000);
    for (;;) {
      if (this.#exit) throw new Error(`server exited before it was ready (${JSON.stringify(this.#exit)})\n${this.output()}`);
      if (await this.ready()) return;
      if (Date.now() > deadline) {
        await this.kill();
        throw new Error(`server not ready within ${this.#options.readyTimeoutMs ?? 30_000} ms\n${this.output()}`);
      }
      await sleep(100);
    }
  }

  /** True when `/readyz` answers 200 now. */
  async ready(): Promise<boolean> {
    try {
      // No keep-alive: the probe must not hold a connection that a graceful shutdown then waits for.
      const res = await fetch(`http://127.0.0.1:${this.httpPort}/readyz`, { headers: { connection: "close" }, signal: AbortSignal.timeout(1000) });
      await res.text();
      return res.status === 200;
    } catch {
      return false;
    }
  }

  /** Sends `signal` and waits for the exit (SIGKILL after `timeoutMs` if it does not come). */
  async signal(signal: NodeJS.Signals, timeoutMs = 20_000): Promise<Exit> {
    const child = this.#child;
    if (!child || !this.#exited) throw new Error("server process was never started");
    if (this.#exit) return this.#exit;
    child.kill(signal);
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<"timeout">((resolve) => {
      timer = setTimeout(() => resolve("timeout"), timeoutMs);
    });
    const r = await Promise.race([this.#exited, timedOut]);
    clearTimeout(timer);
    if (r === "timeout") {
      child.kill("SIGKILL");
      await this.#exited;
      throw new Error(`server did not exit within ${timeoutMs} ms of ${signal}\n${this.output()}`);
    }
    return r;
  }

  /** Graceful stop: SIGTERM, then the exit code and signal. */
  stop(timeoutMs?: number): Promise<Exit> {
    return this.signal("SIGTERM", timeoutMs);
  }

  /** Crash: SIGKILL (kill -9), then the exit. */
  kill(): Promise<Exit> {
    return this.signal("SIGKILL");
  }

  /** Resolves with the exit of the current process whenever it happens. */
  exited(): Promise<Exit> {
    if (!this.#exited) throw new Error("server process was never started");
    return this.#exited;
  }

  /** stdout lines parsed as JSON log records (pino); other lines are skipped. */
  logs(): Array<Record<string, unknown>> {
    const out: Array<Record<string, unknown>> = [];
    for (const line of [...this.stdout, ...this.stderr]) {
      if (!line.startsWith("{")) continue;
      try {
        out.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        // not a log record
      }
    }
    return out;
  }

  /** Everything the process wrote, for failure messages. */
  output(): string {
    return [`--- stdout (${this.stdout.length} lines)`, ...this.stdout.slice(-60), `--- stderr (${this.stderr.length} lines)`, ...this.stderr.slice(-60)].join("\n");
  }

  /** Kills the process if it is still running, drops the database and deletes the Redis keys. */
  async cleanup(): Promise<void> {
    if (this.running) await this.kill().catch(() => {});
    if (this.#owner) {
      await deleteRedisPrefix(this.redisPrefix);
      await this.#dropDatabase();
    }
  }

  /** False for siblings: the first replica owns the database and the Redis keys. */
  get #owner(): boolean {
    return !this.#sibling;
  }
}

function capture(stream: NodeJS.ReadableStream, into: string[]): void {
  let rest = "";
  stream.setEncoding("utf8");
  stream.on("data", (chunk: string) => {
    const parts = (rest + chunk).split("\n");
    rest = parts.pop() ?? "";
    into.push(...parts);
  });
  stream.on("end", () => {
    if (rest) into.push(rest);
    rest = "";
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** grpc.health.v1 serving status names, by wire number. */
export const HEALTH_STATUS = ["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"] as const;

/**
 * grpc.health.v1.Health/Check over a real grpc-js channel. The two messages are tiny (field 1: service name in,
 * status enum out), so they are encoded by hand instead of loading health.proto.
 */
export async function healthCheck(address: string, service = "", timeoutMs = 5000): Promise<string> {
  const client = new grpc.Client(address, grpc.credentials.createInsecure());
  try {
    return await checkOn(client, service, timeoutMs);
  } finally {
    client.close();
  }
}

/**
 * A grpc.health.v1 client that keeps its channel (one HTTP/2 connection) open between checks, the way a client-side
 * load balancer or a sidecar prober watches a server; `healthCheck` opens a new channel for every check instead.
 */
export function healthClient(address: string): { check(service?: string, timeoutMs?: number): Promise<string>; close(): void } {
  const client = new grpc.Client(address, grpc.credentials.createInsecure());
  return { check: (service = "", timeoutMs = 5000) => checkOn(client, service, timeoutMs), close: () => client.close() };
}

function checkOn(client: grpc.Client, service: string, timeoutMs: number): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    client.makeUnaryRequest(
      "/grpc.health.v1.Health/Check",
      (name: string) => Buffer.from(new BinaryWriter().tag(1, 2).string(name).finish()),
      (buf: Buffer) => {
        const r = new BinaryReader(buf);
        let status = 0;
        while (r.pos < r.len) {
          const [field, wire] = r.tag();
          if (field === 1) status = r.int32();
          else r.skip(wire);
        }
        return status;
      },
      service,
      new grpc.Metadata(),
      { deadline: Date.now() + timeoutMs },
      (err, status) => (err ? reject(err) : resolve(HEALTH_STATUS[status ?? 0] ?? String(status))),
    );
  });
}
