/**
 * The `quota-authority` CLI (node src/cli/main.ts) against the real server process over gRPC: every command, its
 * --help, its --json output, and a non-zero exit with one clear line on every kind of error (usage mistakes exit
 * 2, errors from the server or the connection exit 1).
 */
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { COMMANDS, runRemote } from "../../src/cli/remote.ts";
import { ADMIN, clients } from "../support/clients.ts";
import { uniqueId } from "../support/env.ts";
import { ADMIN_TOKEN, REPO_ROOT, ServerProcess } from "../support/server-process.ts";

const SERVICE_TOKEN = "cli-test-service-token";
const plansDoc = (monthly: number, id = "cli") => `
plans:
  - id: ${id}
    name: CLI (${monthly} a month)
    products: [cli-api]
    methods: { default: 1, costs: { things.search: 3 } }
    limits:
      - { name: monthly, kind: quota, scope: subscription, limit: ${monthly}, period: monthly }
      - { name: rps, kind: rate, scope: key, limit: 50, window: 1s }
    topUp: { limit: monthly, increment: 5, price: { units: 5, amount: "0.50" } }
`;

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

describe("the quota-authority CLI against the real server", () => {
  let server: ServerProcess;
  let dir: string;
  let env: Record<string, string>;

  const envWith = (extraEnv: Record<string, string | undefined>): Record<string, string> => {
    const merged: Record<string, string> = { ...env };
    for (const [k, v] of Object.entries(extraEnv)) {
      if (v === undefined) delete merged[k];
      else merged[k] = v;
    }
    return merged;
  };
  /** The command as its own process: `node src/cli/main.ts ARGS` (exit code and streams as a shell sees them). */
  const spawnCli = (args: string[], extraEnv: Record<string, string | undefined> = {}): Promise<Run> =>
    new Promise((resolve) => {
      execFile(process.execPath, ["src/cli/main.ts", ...args], { cwd: REPO_ROOT, env: envWith(extraEnv), timeout: 60_000 }, (err, stdout, stderr) => {
        resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
      });
    });
  /**
   * The same command code (runRemote, what main.ts runs for these commands) in this process, against the real
   * server process: dozens of calls without paying a Node start-up each; the spawned process is tested below.
   */
  const cli = async (args: string[], extraEnv: Record<string, string | undefined> = {}): Promise<Run> => {
    const out: string[] = [];
    const err: string[] = [];
    const code = await runRemote(args, { out: (s) => out.push(`${s}\n`), err: (s) => err.push(`${s}\n`), env: envWith(extraEnv) });
    expect(code, `not a remote command: ${args.join(" ")}`).toBeGreaterThanOrEqual(0);
    return { code, stdout: out.join(""), stderr: err.join("") };
  };
  const ok = async (args: string[], extraEnv?: Record<string, string | undefined>): Promise<string> => {
    const r = await cli(args, extraEnv);
    expect(r, `quota-authority ${args.join(" ")}`).toMatchObject({ code: 0, stderr: "" });
    return r.stdout;
  };
  const json = async (args: string[], extraEnv?: Record<string, string | undefined>) => JSON.parse(await ok([...args, "--json"], extraEnv));

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "qa-cli-"));
    server = await ServerProcess.create({ env: { QUOTA_SERVICE_TOKEN: SERVICE_TOKEN } });
    await server.start();
    const base: Record<string, string> = {};
    for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith("QUOTA_") && !k.startsWith("VITEST")) base[k] = v;
    env = { ...base, QUOTA_SERVER: `127.0.0.1:${server.grpcPort}`, QUOTA_ADMIN_TOKEN: ADMIN_TOKEN, QUOTA_SERVICE_TOKEN: SERVICE_TOKEN };
  }, 120_000);

  afterAll(async () => {
    await server?.cleanup();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("--help on every command (exit 0), the command list on a bare --help, exit 2 on an unknown command", { timeout: 180_000 }, async () => {
    for (const c of COMMANDS) {
      const out = await ok([...c.name.split(" "), "--help"]);
      expect(out, c.name).toMatch(new RegExp(`^usage: quota-authority ${c.name}\\b[^\\n]*\\n\\n${c.summary.replace(/[()]/g, "\\$&")}\\n\\noptions:\\n`));
      expect(out).toContain("--json");
    }
    // As real processes: the local commands' help, the list, an unknown command, one remote command end to end.
    const top = await spawnCli(["--help"]);
    expect(top).toMatchObject({ code: 0, stderr: "" });
    for (const name of [...COMMANDS.map((c) => c.name), "serve", "migrate", "plans apply", "plans validate"]) expect(top.stdout).toContain(`  ${name}`);
    for (const name of ["serve", "migrate", "plans apply"]) {
      const r = await spawnCli([...name.split(" "), "--help"]);
      expect(r, name).toMatchObject({ code: 0, stderr: "" });
      expect(r.stdout).toMatch(new RegExp(`^usage: quota-authority ${name}\\b`));
    }
    const bad = await spawnCli(["frobnicate"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/^quota-authority: unknown command "frobnicate"/);
  });

  it("as its own process: output on stdout, exit 0; errors on stderr, exit 1 or 2", { timeout: 180_000 }, async () => {
    const accountId = uniqueId("cli-proc-").toLowerCase();
    const created = await spawnCli(["accounts", "create", "--id", accountId, "--name", "process", "--json"]);
    expect(created).toMatchObject({ code: 0, stderr: "" });
    expect(JSON.parse(created.stdout).account.id).toBe(accountId);
    expect(await spawnCli(["accounts", "get", "no-such-account"])).toMatchObject({ code: 1, stdout: "" });
    expect(await spawnCli(["deposit", "--amount", "x"])).toMatchObject({ code: 2, stdout: "", stderr: "quota-authority deposit: --account is required (see --help)\n" });
    const down = await spawnCli(["keys", "list", "-a", accountId], { QUOTA_SERVER: "127.0.0.1:1" });
    expect(down.code).toBe(1);
    expect(down.stderr).toMatch(/^error: cannot reach the server at http:\/\/127\.0\.0\.1:1 \(UNAVAILABLE\)/);
  });

  it("plans diff: new, unchanged, changed (field by field), --exit-code", { timeout: 60_000 }, async () => {
    const file = join(dir, "plans.yaml");
    writeFileSync(file, plansDoc(10));
    const before = await cli(["plans", "diff", "-f", file, "--exit-code"]);
    expect(before).toMatchObject({ code: 1, stderr: "" });
    expect(before.stdout).toContain("+ cli: new (not on the server)");
    const c = clients("grpc-js", server.ports);
    try {
      await c.admin.applyPlans({ document: plansDoc(10) }, ADMIN);
    } finally {
      c.close();
    }
    // Plans other tests of this file applied are listed as "only on the server": not this test's concern.
    const mine = (out: string) => out.split("\n").filter((l) => !/^  \S+: only on the server /.test(l)).join("\n");
    expect(mine(await ok(["plans", "diff", "-f", file, "--exit-code"]))).toBe("= cli: unchanged (v1)\nno differences\n");
    writeFileSync(file, plansDoc(20));
    const changed = await cli(["plans", "diff", "-f", file]);
    expect(changed.code).toBe(0); // differences are not an error without --exit-code
    expect(mine(changed.stdout)).toBe('~ cli: changed (server v1 -> file)\n    limits[0].limit: 10 -> 20\n    name: "CLI (10 a month)" -> "CLI (20 a month)"\nplans apply would change the server\n');
    const asJson = await json(["plans", "diff", "-f", file]);
    expect(asJson.plans).toEqual([{ id: "cli", status: "changed", version: 1, changes: ["limits[0].limit: 10 -> 20", 'name: "CLI (10 a month)" -> "CLI (20 a month)"'] }]);
    writeFileSync(file, "plans:\n  - id: cli\n    limits: 5\n");
    const invalid = await cli(["plans", "diff", "-f", file]);
    expect(invalid.code).toBe(1);
    expect(invalid.stderr).toMatch(/^error: .*plans\.yaml: plans\[0\]\.name: /);
    const missing = await cli(["plans", "diff"]);
    expect(missing).toMatchObject({ code: 2, stderr: "quota-authority plans diff: --file is required (see --help)\n" });
  });

  it("accounts, subscriptions, keys, deposit, topup, check, limits, ledger, revoke, cancel", { timeout: 120_000 }, async () => {
    const accountId = uniqueId("cli-").toLowerCase();
    // Its own plan (the "plans diff" test owns plan "cli"): each test runs alone or in any order.
    const c = clients("grpc-js", server.ports);
    try {
      await c.admin.applyPlans({ document: plansDoc(10, "cli-ops") }, ADMIN);
    } finally {
      c.close();
    }
    // accounts
    expect(await ok(["accounts", "create", "--id", accountId, "--name", "CLI customer"])).toMatch(new RegExp(`^account ${accountId} "CLI customer" created \\d{4}-`));
    const got = await json(["accounts", "get", accountId]);
    expect(got.account).toMatchObject({ id: accountId, name: "CLI customer" });
    expect(await ok(["accounts", "get", accountId])).toMatch(new RegExp(`^ID +NAME +CREATED\\n${accountId} +CLI customer +\\d{4}-`));
    const nf = await cli(["accounts", "get", "no-such-account"]);
    expect(nf.code).toBe(1);
    expect(nf.stderr).toMatch(/^error: NOT_FOUND.*no-such-account/);

    // subscriptions and keys
    const sub = (await json(["subscriptions", "create", "--account", accountId, "--plan", "cli-ops"])).subscription;
    expect(sub).toMatchObject({ accountId, planId: "cli-ops", status: "active" });
    const created = await json(["keys", "create", "-a", accountId, "-s", sub.id, "--name", "cli key", "--owner"]);
    expect(created.apiKey).toMatch(/^qa_/);
    expect(created.key).toMatchObject({ subscriptionId: sub.id, status: "active", owner: true, name: "cli key" });
    const plain = await ok(["keys", "create", "-a", accountId, "-s", sub.id, "--sub-limit", "monthly=3", "--overage"]);
    expect(plain).toMatch(/^key \S+ created for subscription \S+\nAPI key \(shown once, store it now\): qa_\S+\n$/);
    const listed = await ok(["keys", "list", "--account", accountId]);
    expect(listed.split("\n")[0]).toMatch(/^KEY +NAME +SUBSCRIPTION +STATUS +OWNER +OVERAGE +SUB-LIMITS +CREATED$/);
    expect(listed).toContain("monthly=3");
    expect((await json(["keys", "list", "-a", accountId])).keys).toHaveLength(2);

    // deposit (a reference is credited once), usage errors name the flag
    const ref = uniqueId("cli-pay-");
    expect(await ok(["deposit", "-a", accountId, "--amount", "5", "--reference", ref])).toMatch(/^deposited: balance 5\.00 USD \(transaction \S+\)\n$/);
    expect(await ok(["deposit", "-a", accountId, "--amount", "5", "--reference", ref])).toMatch(/^reference already credited .*balance 5\.00 USD\n$/);
    expect(await cli(["deposit", "-a", accountId, "--amount", "ten", "--reference", "x"])).toMatchObject({
      code: 2,
      stderr: 'quota-authority deposit: --amount: "ten" is not an amount in dollars (like 10 or 2.50, at most 6 decimals) (see --help)\n',
    });
    const badFlag = await cli(["deposit", "--amout", "5"]);
    expect(badFlag.code).toBe(2);
    expect(badFlag.stderr).toMatch(/^quota-authority deposit: Unknown option '--amout'/);

    // topup (data plane, QUOTA_SERVICE_TOKEN)
    const top = await ok(["topup", "-a", accountId, "--units", "5", "-k", "cli-topup-1"]);
    expect(top).toMatch(/^topped up: \+5 units, new limit 15, wallet 4\.50 USD\ntransaction \S+, idempotency key cli-topup-1\n$/);
    expect(await ok(["topup", "-a", accountId, "--units", "5", "-k", "cli-topup-1"])).toMatch(/^already applied: \+5 units, new limit 15, wallet 4\.50 USD/);
    const byMoney = await json(["topup", "-a", accountId, "--amount", "0.50"]);
    expect(byMoney).toMatchObject({ newLimit: "20", newBalance: { currencyCode: "USD", units: "4" } });
    const notMultiple = await cli(["topup", "-a", accountId, "--units", "3"]);
    expect(notMultiple.code).toBe(1);
    expect(notMultiple.stderr).toMatch(/^error: INVALID_ARGUMENT.*quota\.lines\[0\]\.units/);
    const broke = await cli(["topup", "-a", accountId, "--amount", "100"]);
    expect(broke).toMatchObject({ code: 1, stderr: "error: FAILED_PRECONDITION (INSUFFICIENT_BALANCE): insufficient wallet balance: 4.00 USD available, 100.00 USD needed\n" });
    const noToken = await cli(["topup", "-a", accountId, "--units", "5"], { QUOTA_SERVICE_TOKEN: undefined });
    expect(noToken).toMatchObject({ code: 1, stderr: "error: UNAUTHENTICATED: missing authorization: Bearer <service token>\n" });
    expect(await cli(["topup", "-a", accountId])).toMatchObject({ code: 2, stderr: "quota-authority topup: exactly one of --units and --amount is required (see --help)\n" });

    // check (one CheckAndReserve), with the key from the environment or by id
    const allowed = await ok(["check", "--product", "cli-api", "--method", "things.search"], { QUOTA_API_KEY: created.apiKey });
    expect(allowed).toMatch(/^ALLOWED, cost 3, reservation \S+\nLIMIT +KIND +SCOPE +USED +LIMIT +REMAINING +USAGE +RESETS +SOURCES\n/);
    expect(allowed).toMatch(/monthly +quota +subscription +3 +20 +17 +\[███░+\] +15%/);
    const byId = await json(["check", "--key-id", created.key.id, "--product", "cli-api", "-m", "things.list", "--mode", "check-only"]);
    expect(byId).toMatchObject({ decision: "ALLOWED", cost: "1" });
    expect(byId.reservationId ?? "").toBe("");
    expect(await cli(["check", "--key-id", created.key.id, "--product", "cli-api", "-m", "x", "--mode", "maybe"])).toMatchObject({
      code: 2,
      stderr: 'quota-authority check: --mode: "maybe" is not one of enforce, check-only, shadow (see --help)\n',
    });

    // limits: a table with bars, balances, grants
    const limits = await ok(["limits", "--account", accountId]);
    expect(limits).toMatch(new RegExp(`^account ${accountId} \\(as of \\d{4}-`));
    expect(limits).toMatch(/subscription \S+: plan cli-ops "CLI \(10 a month\)", active, cycle \S+ -> \S+/);
    expect(limits).toMatch(/monthly +quota +subscription +3 +20 +17 +\[███░{17}\] +15% +\S+ +plan 10, grant \S+ 5, grant \S+ 5/);
    expect(limits).toMatch(/prepaid +4\.00 USD +5\.00 USD/);
    expect(limits).toMatch(/GRANT +LIMIT +PRODUCT +UNITS +SOURCE +EXPIRES\n\S+ +monthly +\* +5 +topup +\d{4}-/);
    const limitsJson = await json(["limits", "--key-id", created.key.id]);
    expect(limitsJson.subscriptions[0].limits.find((l: { name: string }) => l.name === "monthly")).toMatchObject({ limit: "20", used: "3", remaining: "17" });
    expect(await cli(["limits"])).toMatchObject({ code: 2, stderr: "quota-authority limits: exactly one of --account, --key-id (or QUOTA_API_KEY) is required (see --help)\n" });

    // ledger
    const ledger = await ok(["ledger", "list", "-a", accountId]);
    expect(ledger.split("\n")[0]).toMatch(/^TIME +TRANSACTION +ACCOUNT +TYPE +POSTINGS +DESCRIPTION$/);
    expect(ledger).toMatch(/quota_purchase +wallet:\S+:prepaid -0\.50; \S+ \+0\.50/);
    expect(ledger).toMatch(new RegExp(`deposit .*\\[ref ${ref}\\]`));
    const page = await json(["ledger", "list", "-a", accountId, "--limit", "1"]);
    expect(page.transactions).toHaveLength(1);
    expect(page.nextPageToken).toBeTruthy();
    expect(await cli(["ledger", "list", "--limit", "0"])).toMatchObject({ code: 2, stderr: "quota-authority ledger list: --limit: must be greater than zero (see --help)\n" });

    // revoke, then the key is denied (--exit-code: 3); cancel
    expect(await ok(["keys", "revoke", created.key.id])).toBe(`key ${created.key.id} revoked\n`);
    await expect.poll(async () => (await cli(["check", "--key-id", created.key.id, "--product", "cli-api", "-m", "things.list", "--exit-code"])).stdout, { timeout: 10_000 }).toMatch(/^DENIED KEY_REVOKED/);
    expect((await cli(["check", "--key-id", created.key.id, "--product", "cli-api", "-m", "things.list", "--exit-code"])).code).toBe(3);
    expect(await ok(["subscriptions", "cancel", sub.id])).toMatch(new RegExp(`^subscription ${sub.id} cancelled`));
    expect(await cli(["keys", "revoke"])).toMatchObject({ code: 2, stderr: "quota-authority keys revoke: KEY_ID is required (see --help)\n" });
  });

  it("credentials and connection errors: one line, exit 1 (exit 2 when the token is missing)", { timeout: 60_000 }, async () => {
    expect(await cli(["keys", "list", "-a", "x"], { QUOTA_ADMIN_TOKEN: "wrong" })).toMatchObject({ code: 1, stderr: "error: UNAUTHENTICATED: invalid admin token\n" });
    expect(await cli(["keys", "list", "-a", "x"], { QUOTA_ADMIN_TOKEN: undefined })).toMatchObject({
      code: 2,
      stderr: "quota-authority keys list: QUOTA_ADMIN_TOKEN is not set: the admin service needs the server's admin token in the environment (see --help)\n",
    });
    const down = await cli(["accounts", "get", "x", "--server", "127.0.0.1:1"]);
    expect(down.code).toBe(1);
    expect(down.stderr).toMatch(/^error: cannot reach the server at http:\/\/127\.0\.0\.1:1 \(UNAVAILABLE\): .*ECONNREFUSED/);
    expect(await cli(["accounts", "get", "x", "--server", "not a server"])).toMatchObject({ code: 2, stderr: 'quota-authority accounts get: --server: "not a server" is not host:port or an http(s):// URL (see --help)\n' });
  });
});
