/**
 * `serve` with QUOTA_WORKERS=2 (node:cluster): the real primary process with two workers, real Postgres and Redis.
 * - both workers run and share the ports: calls over several fresh connections (handed out round-robin) are all
 *   answered, and the quota they count is one (the workers share Redis);
 * - SIGTERM to the primary: every worker stops gracefully and the primary exits 0, no process left behind;
 * - a worker that dies on its own takes the set down: the other worker stops and the primary exits 1.
 */
import { readFileSync } from "node:fs";
import { afterEach, describe, expect, it } from "vitest";
import { Decision } from "../../src/gen/quota/v1/types_pb.ts";
import { ADMIN, clients } from "../support/clients.ts";
import { seedAccount } from "../support/fixtures.ts";
import { ServerProcess } from "../support/server-process.ts";
import { within } from "../support/time.ts";

const PLANS = `
plans:
  - id: workers
    name: workers
    limits:
      - { name: monthly, kind: quota, scope: subscription, limit: 1000, period: monthly }
`;

function childrenOf(pid: number): number[] {
  return readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function waitUntil(what: string, ok: () => boolean, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe("serve --workers (node:cluster)", () => {
  let server: ServerProcess | undefined;
  afterEach(async () => {
    await server?.cleanup();
    server = undefined;
  });

  async function startTwoWorkers(): Promise<{ primary: number; workers: number[] }> {
    server = await ServerProcess.create({ env: { QUOTA_WORKERS: "2", QUOTA_SHUTDOWN_DELAY_MS: "0", QUOTA_LOG_LEVEL: "info" }, readyTimeoutMs: 120_000 });
    await server.start();
    const primary = server.pid!;
    // /readyz answers once the first worker serves; the second starts after it.
    await waitUntil("two workers", () => childrenOf(primary).length === 2 && server!.logs().some((l) => l.msg === "all workers serving"), 120_000);
    return { primary, workers: childrenOf(primary) };
  }

  it("serves from two processes on the same ports and stops all of them on SIGTERM (exit 0)", async () => {
    const { primary, workers } = await startTwoWorkers();
    expect(workers).toHaveLength(2);

    const admin = clients("grpc-js", server!.ports);
    await admin.admin.applyPlans({ document: PLANS }, ADMIN);
    const seeded = await seedAccount(admin, "workers");
    admin.close();
    // Fresh clients = fresh connections, spread over both workers by the primary.
    let allowed = 0;
    for (let i = 0; i < 8; i++) {
      const c = clients("grpc-js", server!.ports);
      for (let j = 0; j < 5; j++) {
        const a = await c.quota.checkAndReserve({ apiKey: seeded.apiKey, product: "api", method: "m", cost: 1n });
        if (a.decision === Decision.ALLOWED) allowed++;
      }
      c.close();
    }
    expect(allowed).toBe(40);
    const c = clients("grpc-js", server!.ports);
    const limits = await c.quota.getLimits({ apiKey: seeded.apiKey });
    c.close();
    // One shared counter: every call counted once, whichever worker answered it.
    expect(limits.subscriptions[0]!.limits.find((l) => l.name === "monthly")!.used).toBe(40n);

    const exit = await within(server!.stop(), 20_000, "primary exit after SIGTERM");
    expect(exit).toEqual({ code: 0, signal: null });
    expect(alive(primary)).toBe(false);
    for (const w of workers) expect(alive(w)).toBe(false);
    expect(server!.logs().filter((l) => l.msg === "stopped")).toHaveLength(2);
  }, 300_000);

  it("stops the other worker and exits 1 when a worker dies on its own", async () => {
    const { workers } = await startTwoWorkers();
    process.kill(workers[0]!, "SIGKILL");
    const exit = await within(server!.exited(), 20_000, "primary exit after a worker died");
    expect(exit.code).toBe(1);
    for (const w of workers) expect(alive(w)).toBe(false);
    expect(server!.logs().some((l) => l.msg === "worker exited" && l.signal === "SIGKILL")).toBe(true);
  }, 300_000);
});
