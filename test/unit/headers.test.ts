/**
 * The answer's headers (src/core/headers.ts). With a call plan's template the RateLimit-Policy value is made once and
 * reused while the limit values stay; a changed limit (a grant, a top-up) makes it again. Every answer equals what a
 * build without a template answers.
 */
import { describe, expect, it } from "vitest";
import { buildHeaders, type HeaderLimit, type HeaderTemplate } from "../../src/core/headers.ts";

const now = Date.parse("2026-02-03T12:00:00Z");
function limits(monthly: bigint, rps: bigint, used: bigint): HeaderLimit[] {
  return [
    { name: "monthly", kind: "QUOTA", scope: "SUBSCRIPTION", limit: monthly, used, remaining: monthly - used, overage: 0n, resetAt: now + 86_400_000, windowMs: 30 * 86_400_000 },
    { name: "rps", kind: "RATE", scope: "KEY", limit: rps, used: 1n, remaining: rps - 1n, overage: 0n, resetAt: now + 1000, windowMs: 1000 },
    { name: "conc", kind: "CONCURRENCY", scope: "KEY", limit: 10n, used: 1n, remaining: 9n, overage: 0n },
  ];
}

describe("answer headers", () => {
  it("the IETF and X-UnitsLimit headers of a 3-limit answer", () => {
    expect(buildHeaders(limits(1000n, 5n, 10n), { now, overageEnabled: false, retryAfterMs: 1500 })).toEqual({
      "RateLimit-Policy": '"monthly";q=1000;w=2592000, "rps";q=5;w=1',
      RateLimit: '"monthly";r=990;t=86400, "rps";r=4;t=1',
      "X-UnitsLimit-Quota-Overage": "disabled",
      "X-UnitsLimit-Quota-Allocated": "1000",
      "X-UnitsLimit-Quota-Used": "10",
      "X-UnitsLimit-Quota-Remaining": "990",
      "Retry-After": "2",
    });
  });

  it("with a template: the policy is reused while the limits stay, and made again when one changes", () => {
    const template: HeaderTemplate = {};
    const steps: Array<[bigint, bigint, bigint]> = [[1000n, 5n, 1n], [1000n, 5n, 2n], [1500n, 5n, 3n], [1500n, 5n, 4n], [1500n, 7n, 5n], [1000n, 5n, 6n]];
    const policies: string[] = [];
    for (const [m, r, u] of steps) {
      const h = buildHeaders(limits(m, r, u), { now, overageEnabled: true, template });
      expect(h).toEqual(buildHeaders(limits(m, r, u), { now, overageEnabled: true }));
      policies.push(h["RateLimit-Policy"]!);
    }
    expect(policies[1]).toBe(policies[0]);
    expect(policies[2]).toBe('"monthly";q=1500;w=2592000, "rps";q=5;w=1');
    expect(policies[4]).toBe('"monthly";q=1500;w=2592000, "rps";q=7;w=1');
    expect(policies[5]).toBe('"monthly";q=1000;w=2592000, "rps";q=5;w=1');
    expect(template.policy).toBe(policies[5]);
  });

  it("a template made for another list of limits is not reused for a shorter one", () => {
    const template: HeaderTemplate = {};
    buildHeaders(limits(1000n, 5n, 1n), { now, overageEnabled: false, template });
    const one = limits(1000n, 5n, 1n).slice(0, 1);
    expect(buildHeaders(one, { now, overageEnabled: false, template })["RateLimit-Policy"]).toBe('"monthly";q=1000;w=2592000');
  });
});
