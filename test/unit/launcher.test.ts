/**
 * bin/quota-authority, the command users and the image run: main.ts with its arguments on Node >= 24, and node flags
 * from NODE_OPTIONS (docs/performance.md, "Memory": a semi-space cap for large hosts). Run here against a stub
 * main.ts that reports what its process got.
 */
import { execFileSync } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, expect, it } from "vitest";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const dir = mkdtempSync(join(tmpdir(), "qa-launcher-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
mkdirSync(join(dir, "bin"));
mkdirSync(join(dir, "scripts"));
mkdirSync(join(dir, "src/cli"), { recursive: true });
cpSync(join(ROOT, "bin/quota-authority"), join(dir, "bin/quota-authority"));
cpSync(join(ROOT, "scripts/node"), join(dir, "scripts/node"));
// Allocates enough short-lived garbage for the young generation to grow to its limit, then reports it.
writeFileSync(
  join(dir, "src/cli/main.ts"),
  `import { getHeapSpaceStatistics } from "node:v8";
let keep: object[] = [];
for (let i = 0; i < 3_000_000; i++) { keep.push({ i, s: "x" + i }); if (keep.length > 200_000) keep = []; }
const young = getHeapSpaceStatistics().find((s) => s.space_name === "new_space")!.space_size;
console.log(JSON.stringify({ argv: process.argv.slice(2), execArgv: process.execArgv, youngMB: young / 2 ** 20 }));
`,
);

function run(env: Record<string, string> = {}) {
  // This test's Node (>= 24) first on PATH: scripts/node then runs it instead of bootstrapping one.
  const out = execFileSync("sh", [join(dir, "bin/quota-authority"), "serve", "--demo"], {
    env: { ...process.env, NODE_OPTIONS: "", ...env, PATH: `${dirname(process.execPath)}:${process.env.PATH}` },
    encoding: "utf8",
    timeout: 60_000,
  });
  return JSON.parse(out.trim()) as { argv: string[]; execArgv: string[]; youngMB: number };
}

it("runs main.ts with its arguments and V8's own young generation (sized from the machine's or container's memory)", () => {
  const r = run();
  expect(r.argv).toEqual(["serve", "--demo"]);
  expect(r.execArgv).toEqual([]);
});

it("passes NODE_OPTIONS on: the documented semi-space cap for large hosts takes effect", () => {
  const r = run({ NODE_OPTIONS: "--max-semi-space-size=4" });
  expect(r.youngMB).toBeLessThanOrEqual(8);
  expect(r.argv).toEqual(["serve", "--demo"]);
});
