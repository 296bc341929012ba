/**
 * A private 3-master Redis Cluster on free loopback ports (redis-server --cluster-enabled yes, then
 * redis-cli --cluster create), for the counter-store contract suite. Never touches the machine's shared Redis.
 */
import { spawn, execFile, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { Cluster, Redis } from "ioredis";
import { freePort } from "./redis-server.ts";

const run = promisify(execFile);

export class PrivateRedisCluster {
  readonly ports: number[];
  readonly #procs: ChildProcess[] = [];
  readonly #dir: string;

  private constructor(ports: number[], dir: string) {
    this.ports = ports;
    this.#dir = dir;
  }

  /** `masters`: 1, or 3 and more (redis-cli --cluster create needs 3). */
  static async start(masters = 3): Promise<PrivateRedisCluster> {
    if (masters === 2) throw new Error("a private cluster has 1, or 3 and more, masters");
    const ports: number[] = [];
    while (ports.length < masters) {
      const p = await freePort();
      // the cluster bus listens on port + 10000: both must be free and below 65536
      if (p < 55_000 && !ports.includes(p)) ports.push(p);
    }
    const c = new PrivateRedisCluster(ports, mkdtempSync(join(tmpdir(), "qa-cluster-")));
    try {
      for (const port of ports) {
        c.#procs.push(spawn("redis-server", [
          "--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
          "--cluster-enabled", "yes", "--cluster-announce-ip", "127.0.0.1", "--cluster-config-file", join(c.#dir, `nodes-${port}.conf`), "--dir", c.#dir,
        ], { stdio: "ignore" }));
      }
      for (const port of ports) await waitForPing(port);
      if (masters === 1) {
        // redis-cli --cluster create wants 3 masters: one master takes every slot itself (the bench's 1-shard row).
        await run("redis-cli", ["-p", String(ports[0]), "cluster", "addslotsrange", "0", "16383"], { timeout: 30_000 });
      } else {
        await run("redis-cli", ["--cluster", "create", ...ports.map((p) => `127.0.0.1:${p}`), "--cluster-replicas", "0", "--cluster-yes"], { timeout: 30_000 });
      }
      const deadline = Date.now() + 20_000;
      for (;;) {
        const info = (await run("redis-cli", ["-p", String(ports[0]), "cluster", "info"])).stdout;
        if (/cluster_state:ok/.test(info) && /cluster_slots_assigned:16384/.test(info)) break;
        if (Date.now() > deadline) throw new Error(`cluster did not become ready:\n${info}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    } catch (e) {
      await c.stop();
      throw e;
    }
    return c;
  }

  connect(): Cluster {
    // auto-pipelining off, as src/store/redis/connect.ts does for a Cluster (ADR 15)
    return new Cluster(this.ports.map((port) => ({ host: "127.0.0.1", port })), { enableAutoPipelining: false });
  }

  async stop(): Promise<void> {
    await Promise.all(this.#procs.map((p) => p.exitCode !== null ? undefined : new Promise<void>((resolve) => {
      p.once("exit", () => resolve());
      p.kill("SIGKILL");
    })));
    rmSync(this.#dir, { recursive: true, force: true });
  }
}

async function waitForPing(port: number): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const probe = new Redis(port, "127.0.0.1", { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    probe.on("error", () => {});
    try {
      await probe.connect();
      await probe.ping();
      probe.disconnect();
      return;
    } catch {
      probe.disconnect();
      if (Date.now() > deadline) throw new Error(`redis-server on ${port} did not start`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}
