/**
 * Repository hygiene that CI must enforce: src/gen matches proto/ (buf generate into a temp dir and compare),
 * buf lint is clean, and the TypeScript typecheck passes.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { describe, expect, it } from "vitest";

const root = new URL("../..", import.meta.url).pathname;
const bin = (name: string) => join(root, "node_modules", ".bin", name);

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    return statSync(p).isDirectory() ? files(p) : [p];
  });
}

describe("repository hygiene", () => {
  it("src/gen is exactly what buf generate makes from proto/", () => {
    const out = mkdtempSync(join(tmpdir(), "qa-gen-"));
    try {
      execFileSync(bin("buf"), ["generate", "-o", out], { cwd: root, stdio: "pipe", env: { ...process.env, PATH: `${join(root, "node_modules", ".bin")}:${process.env.PATH}` } });
      const fresh = files(join(out, "src/gen")).map((f) => relative(join(out, "src/gen"), f)).sort();
      const checkedIn = files(join(root, "src/gen")).map((f) => relative(join(root, "src/gen"), f)).sort();
      expect(checkedIn).toEqual(fresh);
      for (const f of fresh) {
        expect(readFileSync(join(root, "src/gen", f), "utf8"), `src/gen/${f} is stale: run npm run generate`).toBe(readFileSync(join(out, "src/gen", f), "utf8"));
      }
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  }, 60_000);

  it("buf lint is clean", () => {
    execFileSync(bin("buf"), ["lint"], { cwd: root, stdio: "pipe" });
  }, 60_000);

  it("typecheck (tsc --noEmit) is clean", () => {
    try {
      execFileSync(bin("tsc"), ["--noEmit", "-p", "tsconfig.json"], { cwd: root, stdio: "pipe" });
    } catch (e) {
      throw new Error(`tsc failed:\n${(e as { stdout?: Buffer }).stdout?.toString()}`);
    }
  }, 120_000);
});
