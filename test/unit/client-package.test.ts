/**
 * packages/client (@quota-authority/client) as it is published: its generated code matches proto/, it depends only
 * on what a calling service needs (no server internals), and its build (dist/, what `npm publish` ships) loads in
 * plain Node without the workspace's source condition.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { describe, expect, it } from "vitest";
import { headersFor, statusFor } from "../../packages/client/src/middleware/core.ts";

const root = new URL("../..", import.meta.url).pathname;
const pkgDir = join(root, "packages/client");
const bin = (name: string) => join(root, "node_modules", ".bin", name);

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    return statSync(p).isDirectory() ? files(p) : [p];
  });
}

describe("@quota-authority/client package", () => {
  it("packages/client/src/gen is exactly what buf generate makes from proto/ with packages/client/buf.gen.yaml", () => {
    const out = mkdtempSync(join(tmpdir(), "qa-client-gen-"));
    try {
      execFileSync(bin("buf"), ["generate", "--template", "packages/client/buf.gen.yaml", "-o", out], {
        cwd: root,
        stdio: "pipe",
        env: { ...process.env, PATH: `${join(root, "node_modules", ".bin")}:${process.env.PATH}` },
      });
      const genOut = join(out, "packages/client/src/gen");
      const fresh = files(genOut).map((f) => relative(genOut, f)).sort();
      const checkedIn = files(join(pkgDir, "src/gen")).map((f) => relative(join(pkgDir, "src/gen"), f)).sort();
      expect(checkedIn).toEqual(fresh);
      expect(fresh).toEqual(["quota/v1/quota_pb.ts", "quota/v1/types_pb.ts"]);
      for (const f of fresh) {
        expect(readFileSync(join(pkgDir, "src/gen", f), "utf8"), `packages/client/src/gen/${f} is stale: run npm run generate`).toBe(readFileSync(join(genOut, f), "utf8"));
      }
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  }, 60_000);

  it("depends only on protobuf-es and connect; sources import nothing else at run time (server internals never)", () => {
    const pkg = JSON.parse(readFileSync(join(pkgDir, "package.json"), "utf8")) as { dependencies: Record<string, string>; peerDependencies: Record<string, string> };
    expect(Object.keys(pkg.dependencies).sort()).toEqual(["@bufbuild/protobuf", "@connectrpc/connect", "@connectrpc/connect-node"]);
    // One version across the workspace (pinned exactly, the same as the server's).
    const rootPkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { dependencies: Record<string, string> };
    for (const [name, version] of Object.entries(pkg.dependencies)) expect(version, name).toBe(rootPkg.dependencies[name]);
    expect(Object.keys(pkg.peerDependencies).sort()).toEqual(["express", "fastify", "hono"]);

    const allowed = /^(node:.+|@bufbuild\/protobuf(\/.+)?|@connectrpc\/connect(\/.+)?|@connectrpc\/connect-node|\.{1,2}\/.+)$/;
    const typeOnly = /^(express|fastify|hono)$/;
    for (const f of files(join(pkgDir, "src"))) {
      const src = readFileSync(f, "utf8");
      for (const m of src.matchAll(/^\s*(import|export)\s+(type\s+)?[^;]*?from\s+"([^"]+)"/gms)) {
        const [, , isType, spec] = m;
        const where = `${relative(root, f)} imports ${spec}`;
        if (typeOnly.test(spec!)) expect(isType, `${where}: framework imports must be type-only`).toBeTruthy();
        else expect(spec, where).toMatch(allowed);
        if (spec!.startsWith(".")) expect(join(f, "..", spec!).startsWith(pkgDir), `${where}: outside the package`).toBe(true);
      }
    }
  });

  it("builds (tsc -> dist/) and the build loads in plain Node through the package's exports", () => {
    try {
      execFileSync(bin("tsc"), ["-p", "packages/client/tsconfig.build.json"], { cwd: root, stdio: "pipe" });
    } catch (e) {
      throw new Error(`build failed:\n${(e as { stdout?: Buffer }).stdout?.toString()}`);
    }
    const script = `
      const main = await import("@quota-authority/client");
      const ex = await import("@quota-authority/client/express");
      const fa = await import("@quota-authority/client/fastify");
      const ho = await import("@quota-authority/client/hono");
      const c = main.createQuotaClient({ address: "127.0.0.1:1" });
      c.close();
      console.log(JSON.stringify({
        main: Object.keys(main).sort(),
        resolved: import.meta.resolve("@quota-authority/client"),
        adapters: [typeof ex.quotaLimit, typeof fa.quotaLimit, typeof ho.quotaLimit],
      }));`;
    // process.execPath is Node 24, but without the @quota-authority/source condition: exactly what a consumer runs.
    const out = execFileSync(process.execPath, ["--input-type=module", "-e", script], { cwd: root, encoding: "utf8" });
    const r = JSON.parse(out) as { main: string[]; resolved: string; adapters: string[] };
    expect(r.resolved).toMatch(/packages\/client\/dist\/index\.js$/);
    expect(r.adapters).toEqual(["function", "function", "function"]);
    expect(r.main).toEqual(
      ["QuotaCanceledError", "QuotaError", "QuotaInputError", "QuotaRequestError", "QuotaUnavailableError", "createQuotaClient", "proto", "protoTypes", "statusFor"].sort(),
    );
  }, 120_000);
});

describe("middleware rules", () => {
  it("the HTTP status of every denial reason", () => {
    const table = Object.fromEntries(
      (
        [
          "RATE_LIMITED",
          "QUOTA_EXHAUSTED",
          "CONCURRENCY_LIMITED",
          "BUDGET_EXHAUSTED",
          "KEY_MISSING",
          "KEY_INVALID",
          "KEY_REVOKED",
          "KEY_EXPIRED",
          "SUBSCRIPTION_ENDED",
          "SUBSCRIPTION_NOT_STARTED",
          "OUTSIDE_ACCESS_WINDOW",
          "PRODUCT_NOT_ALLOWED",
          "UNAVAILABLE",
        ] as const
      ).map((r) => [r, statusFor(r)]),
    );
    expect(table).toEqual({
      RATE_LIMITED: 429,
      QUOTA_EXHAUSTED: 429,
      CONCURRENCY_LIMITED: 429,
      BUDGET_EXHAUSTED: 402,
      KEY_MISSING: 401,
      KEY_INVALID: 401,
      KEY_REVOKED: 401,
      KEY_EXPIRED: 401,
      SUBSCRIPTION_ENDED: 403,
      SUBSCRIPTION_NOT_STARTED: 403,
      OUTSIDE_ACCESS_WINDOW: 403,
      PRODUCT_NOT_ALLOWED: 403,
      UNAVAILABLE: 503,
    });
  });

  it("headers: standardHeaders and quotaHeaders pick their families; Retry-After only on denials, from the server or retryAfterMs", () => {
    const headers = { "RateLimit-Policy": '"rps";q=10;w=1', RateLimit: '"rps";r=0;t=1', "X-UnitsLimit-Quota-Used": "5", "Retry-After": "1" };
    const common = { limits: [], headers, cost: 0n, reservedSpendMicros: 0n, replayed: false, unavailable: undefined };
    const denied = { ...common, allowed: false, decision: "DENIED", reason: "RATE_LIMITED", deniedLimit: "rps", availableAt: undefined, retryAfterMs: 900 } as const;
    const allowed = { ...common, allowed: true, decision: "ALLOWED", reason: undefined, reservationId: "r", lease: undefined, overage: false, failOpen: false, shadowReason: undefined, retryAfterMs: undefined } as const;
    expect(headersFor({ standardHeaders: true, quotaHeaders: true }, denied)).toEqual(headers);
    expect(headersFor({ standardHeaders: false, quotaHeaders: true }, denied)).toEqual({ "X-UnitsLimit-Quota-Used": "5", "Retry-After": "1" });
    expect(headersFor({ standardHeaders: true, quotaHeaders: false }, allowed)).toEqual({ "RateLimit-Policy": '"rps";q=10;w=1', RateLimit: '"rps";r=0;t=1' });
    expect(headersFor({ standardHeaders: false, quotaHeaders: false }, { ...denied, headers: {}, retryAfterMs: 1500 })).toEqual({ "Retry-After": "2" });
  });
});
