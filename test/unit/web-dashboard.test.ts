/**
 * The dashboard's pure helpers (exact money, input parsing, words for errors and times) and the checked-in build:
 * web/dist must be exactly what `npm run build:web` makes from web/ and src/gen today (like src/gen, a stale build
 * fails here), and web/ must typecheck under its own DOM tsconfig.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { describe, expect, it } from "vitest";
import { describeError, formatCount, formatMoney, formatWindow, InputError, parseDollars, parseUnits, relativeTime, usedShare } from "../../web/src/format.ts";
import { demoOrigins } from "../../src/cli/demo.ts";
import { REPO_ROOT } from "../support/server-process.ts";

describe("dashboard formatting", () => {
  it("formats money exactly (bigint units + nanos, never a float)", () => {
    expect(formatMoney({ currencyCode: "USD", units: 24n, nanos: 0 })).toBe("24.00 USD");
    expect(formatMoney({ currencyCode: "USD", units: 1234567n, nanos: 500_000_000 })).toBe("1,234,567.50 USD");
    expect(formatMoney({ currencyCode: "USD", units: 0n, nanos: 2_200_000 })).toBe("0.0022 USD");
    expect(formatMoney({ currencyCode: "USD", units: -3n, nanos: -250_000_000 })).toBe("-3.25 USD");
    expect(formatMoney({ currencyCode: "USD", units: 9_007_199_254_740_993n, nanos: 1_000 })).toBe("9,007,199,254,740,993.000001 USD");
    expect(formatMoney(undefined)).toBe("—");
    expect(formatCount(3_100_000n)).toBe("3,100,000");
  });

  it("parses what a customer types, and names the problem otherwise", () => {
    expect(parseUnits(" 100 ")).toBe(100n);
    expect(parseUnits("100,000")).toBe(100_000n);
    expect(parseDollars("$2.50")).toEqual({ currencyCode: "USD", units: 2n, nanos: 500_000_000 });
    expect(parseDollars("0.000001")).toEqual({ currencyCode: "USD", units: 0n, nanos: 1_000 });
    for (const bad of ["", "ten", "-5", "1.5", "1e3"]) expect(() => parseUnits(bad), bad).toThrow(InputError);
    expect(() => parseUnits("0")).toThrow("the number of units must be more than zero");
    for (const bad of ["", "ten", "-1", "1.0000001", "1,5.5.5"]) expect(() => parseDollars(bad), bad).toThrow(InputError);
    expect(() => parseDollars("0.00")).toThrow("the amount must be more than zero");
  });

  it("bars, times and windows", () => {
    expect(usedShare(1n, 4n)).toBe(0.25);
    expect(usedShare(7n, 5n)).toBe(1);
    expect(usedShare(0n, 0n)).toBe(0);
    const now = Date.UTC(2026, 0, 1);
    expect(relativeTime(now + 45_000, now)).toBe("in 45 s");
    expect(relativeTime(now + 23 * 3_600_000 + 59 * 60_000 + 50_000, now)).toBe("in 24 h");
    expect(relativeTime(now + 3 * 3_600_000 + 12 * 60_000, now)).toBe("in 3 h 12 min");
    expect(relativeTime(now - 120_000, now)).toBe("2 min ago");
    expect(relativeTime(now + 31 * 86_400_000, now)).toBe("in 31 days");
    expect(formatWindow(86400)).toBe("per day");
    expect(formatWindow(60)).toBe("per minute");
    expect(formatWindow(7200)).toBe("per 2 hours");
  });

  it("says errors in words", () => {
    const api = "http://127.0.0.1:8080";
    expect(describeError({ code: 9, rawMessage: "insufficient wallet balance: 5.00 USD available, 10.00 USD needed", reason: "INSUFFICIENT_BALANCE" }, api)).toBe(
      "Your wallet balance is too low for this purchase: insufficient wallet balance: 5.00 USD available, 10.00 USD needed.",
    );
    expect(describeError({ code: 16, rawMessage: "unknown api key" }, api)).toBe("The API key was not accepted: unknown api key.");
    expect(describeError({ code: 5, rawMessage: "api key not found", reason: "KEY_NOT_FOUND" }, api)).toBe("This API key is not known (check that it was copied whole): api key not found.");
    expect(describeError({ code: 7, rawMessage: "origin https://x.example is not allowed" }, api)).toMatch(/QUOTA_ALLOWED_ORIGINS/);
    expect(describeError({ code: 2, rawMessage: "Failed to fetch" }, api)).toMatch(/^Could not reach the quota service at http:\/\/127\.0\.0\.1:8080\./);
    expect(describeError({ code: 14, rawMessage: "storage unavailable" }, api)).toBe("The quota service is unavailable right now; try again in a moment: storage unavailable.");
  });
});

describe("--demo without QUOTA_ALLOWED_ORIGINS", () => {
  it("allows the origins of the dashboard the server itself serves", () => {
    expect(demoOrigins("127.0.0.1", 8080)).toBe("http://127.0.0.1:8080,http://localhost:8080");
    expect(demoOrigins("0.0.0.0", 9000)).toBe("http://127.0.0.1:9000,http://localhost:9000");
    expect(demoOrigins("quota.internal", 8080)).toBe("http://quota.internal:8080");
    expect(demoOrigins("::1", 8080)).toBe("http://[::1]:8080");
  });
});

function tree(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string) => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      if (statSync(p).isDirectory()) walk(p);
      else out[relative(dir, p)] = readFileSync(p, "base64");
    }
  };
  walk(dir);
  return out;
}

describe("the checked-in dashboard build (web/dist)", () => {
  it("is what npm run build:web makes now", { timeout: 120_000 }, () => {
    const out = mkdtempSync(join(tmpdir(), "qa-web-"));
    try {
      execFileSync(process.execPath, ["node_modules/vite/bin/vite.js", "build", "web"], { cwd: REPO_ROOT, env: { ...process.env, QUOTA_WEB_OUT_DIR: out }, stdio: "pipe" });
      const fresh = tree(out);
      expect(Object.keys(fresh).sort()).toEqual(Object.keys(tree(join(REPO_ROOT, "web/dist"))).sort());
      expect(tree(join(REPO_ROOT, "web/dist")), "web/dist is stale: run npm run build:web and commit it").toEqual(fresh);
      const html = Buffer.from(fresh["index.html"]!, "base64").toString();
      expect(html).toMatch(/<script type="module" crossorigin src="\.\/assets\/index-[\w-]+\.js"><\/script>/);
      expect(html).not.toMatch(/<script>|<style>/);
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });

  it("typechecks (web/tsconfig.json: DOM, bundler resolution)", { timeout: 120_000 }, () => {
    execFileSync(process.execPath, ["node_modules/typescript/bin/tsc", "--noEmit", "-p", "web/tsconfig.json"], { cwd: REPO_ROOT, stdio: "pipe" });
  });
});
