/**
 * A private redis-server on a free loopback port, for tests that stop, restart or empty Redis. Never touches the
 * machine's shared Redis.
 */
import { spawn, type ChildProcess } from "node:child_process";
import * as net from "node:net";
import { Redis } from "ioredis";

export async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

export class PrivateRedis {
  #proc: ChildProcess | undefined;
  readonly port: number;
  readonly #args: string[];

  private constructor(port: number, args: string[]) {
    this.port = port;
    this.#args = args;
  }

  /** `args`: extra redis-server arguments, e.g. ["--maxmemory-policy", "allkeys-lru"]. */
  static async start(port?: number, args: string[] = []): Promise<PrivateRedis> {
    const r = new PrivateRedis(port ?? (await freePort()), args);
    await r.startProcess();
    return r;
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  async startProcess(): Promise<void> {
    this.#proc = spawn("redis-server", ["--port", String(this.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", ...this.#args], { stdio: "ignore" });
    const deadline = Date.now() + 10_000;
    for (;;) {
      const probe = new Redis(this.port, "127.0.0.1", { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
      probe.on("error", () => {});
      try {
        await probe.connect();
        await probe.ping();
        probe.disconnect();
        return;
      } catch {
        probe.disconnect();
        if (Date.now() > deadline) throw new Error("private redis-server did not start");
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  /** SIGKILL: the data is gone (no persistence). */
  async kill(): Promise<void> {
    const p = this.#proc;
    if (!p || p.exitCode !== null) return;
    await new Promise<void>((resolve) => {
      p.once("exit", () => resolve());
      p.kill("SIGKILL");
    });
  }

  async restartEmpty(): Promise<void> {
    await this.kill();
    await this.startProcess();
  }

  async stop(): Promise<void> {
    await this.kill();
  }
}
