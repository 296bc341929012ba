/**
 * A server that cannot start must exit with the error, not linger. Found in CI: a test's HTTP port was taken by
 * another process between choosing it and starting; the server logged `listen EADDRINUSE`, returned from `serve`
 * with exit code 1 set, but kept running on the gRPC listener, Redis and Postgres connections it had already opened,
 * never ready, until the test gave up 30 s later. Under Kubernetes that is a pod that neither starts nor restarts.
 */
import * as net from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { ServerProcess } from "../support/server-process.ts";

describe("a server that cannot start", () => {
  let server: ServerProcess | undefined;
  let blocker: net.Server | undefined;
  afterEach(async () => {
    await server?.cleanup();
    await new Promise<void>((r) => (blocker ? blocker.close(() => r()) : r()));
  });

  it("exits 1 with the error when its HTTP port is taken, after closing what it had opened", async () => {
    blocker = net.createServer();
    const port = await new Promise<number>((resolve) => blocker!.listen(0, "127.0.0.1", () => resolve((blocker!.address() as net.AddressInfo).port)));
    server = await ServerProcess.create({ env: { QUOTA_HTTP_PORT: String(port) }, readyTimeoutMs: 20_000 });
    const started = Date.now();
    // Before: "server not ready within 20000 ms" (the process still running).
    await expect(server.start()).rejects.toThrow(/exited before it was ready[\s\S]*EADDRINUSE/);
    expect(Date.now() - started).toBeLessThan(15_000);
    expect(server.running).toBe(false);
    expect(server.stderr.join("\n")).toMatch(/error: listen EADDRINUSE/);
  });
});
