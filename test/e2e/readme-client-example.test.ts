/**
 * The README's "Use it from your service" example, run as written: examples/client/express-app.ts (which the README
 * quotes verbatim) as its own Node process, in front of the real server started with `--demo`, called with the
 * demo key it prints.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createQuotaClient, type QuotaClient } from "@quota-authority/client";
import { REPO_ROOT, ServerProcess, freePort } from "../support/server-process.ts";
import { sleep, within } from "../support/time.ts";

const EXAMPLE = "examples/client/express-app.ts";

describe("README: Use it from your service", () => {
  let server: ServerProcess;
  let app: ChildProcess | undefined;
  let url = "";
  let apiKey = "";
  let client: QuotaClient;
  const appOutput: string[] = [];

  beforeAll(async () => {
    server = await ServerProcess.create({ args: ["--demo"], env: { QUOTA_STORE_DEADLINE_MS: "2000" } });
    await server.start();
    // --demo prints the key once the service is serving.
    const keyPattern = /qa_[a-z2-7]{16}_[A-Za-z0-9_-]{43}/;
    for (let i = 0; i < 200 && !keyPattern.test(server.stdout.join("\n")); i++) await sleep(50);
    apiKey = keyPattern.exec(server.stdout.join("\n"))?.[0] ?? "";
    expect(apiKey, server.output()).not.toBe("");
    client = createQuotaClient({ address: `127.0.0.1:${server.grpcPort}`, deadlineMs: 5000 });

    const port = await freePort();
    // In this repository the package is used from its sources (the workspace's export condition); installed from
    // npm it resolves to the built dist/ without any flag.
    app = spawn(process.execPath, ["--conditions=@quota-authority/source", EXAMPLE], {
      cwd: REPO_ROOT,
      env: { PATH: process.env.PATH ?? "", QUOTA_ADDRESS: `127.0.0.1:${server.grpcPort}`, PORT: String(port) },
      stdio: ["ignore", "pipe", "pipe"],
    });
    app.stdout!.on("data", (b: Buffer) => appOutput.push(b.toString()));
    app.stderr!.on("data", (b: Buffer) => appOutput.push(b.toString()));
    await within(
      (async () => {
        while (!appOutput.join("").includes("listening on")) {
          if (app!.exitCode !== null) throw new Error(`example exited: ${appOutput.join("")}`);
          await sleep(50);
        }
      })(),
      20_000,
      "example app start",
    );
    url = `http://127.0.0.1:${port}`;
  });

  afterAll(async () => {
    app?.kill("SIGKILL");
    client?.close();
    await server?.cleanup();
  });

  it("the README quotes the example file verbatim", () => {
    const readme = readFileSync(join(REPO_ROOT, "README.md"), "utf8");
    const source = readFileSync(join(REPO_ROOT, EXAMPLE), "utf8");
    expect(readme.includes(source), `README.md must contain ${EXAMPLE} exactly`).toBe(true);
  });

  it("headers on every answer, the actual cost committed, 429 with Retry-After after the demo's 5 a day, 401 without a key", async () => {
    const used = async () => {
      const gl = await client.getLimits({ apiKey });
      return gl.subscriptions[0]!.limits.find((l) => l.name === "requests-daily")!.used;
    };
    const settled = async (n: bigint) => {
      for (let i = 0; i < 200 && (await used()) !== n; i++) await sleep(25);
      expect(await used()).toBe(n);
    };

    // Warm the server's key cache with a dry run (the first call per key reads Postgres, which on a loaded CI machine
    // can take longer than the example's deadline: that is what its failure mode is for, but not what this tests).
    expect((await client.checkAndReserve({ apiKey, product: "demo-api", method: "things.list", mode: "CHECK_ONLY" })).allowed).toBe(true);

    const first = await fetch(`${url}/things`, { headers: { "x-api-key": apiKey } });
    expect(first.status, appOutput.join("")).toBe(200);
    expect(await first.json()).toEqual({ things: ["a", "b"], remaining: "4" });
    expect(first.headers.get("ratelimit-policy")).toContain('"requests-daily";q=5');
    expect(first.headers.get("x-unitslimit-quota-remaining")).toBe("4");
    await settled(1n);

    // things.search reserves 2 units; the handler says it cost 1.
    const search = await fetch(`${url}/search`, { headers: { "x-api-key": apiKey } });
    expect(search.status).toBe(200);
    expect(search.headers.get("x-unitslimit-quota-remaining")).toBe("2");
    await search.arrayBuffer();
    await settled(2n);

    for (let n = 3n; n <= 5n; n++) {
      const r = await fetch(`${url}/things`, { headers: { "x-api-key": apiKey } });
      expect(r.status).toBe(200);
      await r.arrayBuffer();
      await settled(n);
    }
    const denied = await fetch(`${url}/things`, { headers: { "x-api-key": apiKey } });
    expect(denied.status).toBe(429);
    expect(Number(denied.headers.get("retry-after"))).toBeGreaterThan(0);
    expect(await denied.json()).toMatchObject({ reason: "QUOTA_EXHAUSTED", limit: "requests-daily" });

    const anonymous = await fetch(`${url}/things`);
    expect(anonymous.status).toBe(401);
    await anonymous.arrayBuffer();
  });
});
