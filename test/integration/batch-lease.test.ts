/**
 * CheckAndReserveBatch / ReleaseBatch (each item decided as the single call, independently, in order) and Lease
 * (calls taken in advance in one atomic reserve, shrinking near exhaustion, settled with what was used; never more
 * admitted than the limit, across 4 client processes).
 */
import { spawn } from "node:child_process";
import { status } from "@grpc/grpc-js";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Outcome, ReleaseState } from "../../src/gen/quota/v1/quota_pb.ts";
import { Decision, DenyReason } from "../../src/gen/quota/v1/types_pb.ts";
import { startTestApp } from "../support/app.ts";
import { ADMIN, clients, codeOf, messageOf } from "../support/clients.ts";
import { seedAccount } from "../support/fixtures.ts";
import type { LeaseJob, LeaseWorkerResult } from "../support/lease-worker.ts";
import { startScenario, type Scenario } from "../support/scenario.ts";
import { REPO_ROOT } from "../support/server-process.ts";

const PLANS = `
plans:
  - id: b-quota
    name: quota 5 a day
    limits: [{ name: daily, kind: quota, limit: 5, period: daily }]
  - id: l-quota
    name: quota 1000 a day
    methods: { default: 1, costs: { heavy: 3 } }
    limits: [{ name: daily, kind: quota, limit: 1000, period: daily }]
  - id: l-small
    name: quota 10 a day
    limits: [{ name: daily, kind: quota, limit: 10, period: daily }]
  - id: l-rate
    name: quota and rate
    limits:
      - { name: daily, kind: quota, limit: 1000, period: daily }
      - { name: rps, kind: rate, scope: key, limit: 10, window: 1s }
  - id: l-mp
    name: quota 3000 a month
    limits: [{ name: monthly, kind: quota, limit: 3000, period: monthly }]
`;

describe("batches and leases", () => {
  let s: Scenario;
  beforeAll(async () => {
    s = await startScenario("2026-06-10T12:00:00Z");
    await s.c.admin.applyPlans({ document: PLANS }, ADMIN);
  });
  afterAll(async () => s?.stop());

  const daily = async (apiKey: string) => (await s.c.quota.getLimits({ apiKey })).subscriptions[0]!.limits.find((l) => l.name === "daily" || l.name === "monthly")!;

  it("decides each batch item as CheckAndReserve would, in order, with per-item errors naming the item", async () => {
    const k = await seedAccount(s.c, "b-quota");
    const item = { apiKey: k.apiKey, product: "p", method: "m" };
    const r = await s.c.quota.checkAndReserveBatch({
      requests: [item, { ...item, product: "" }, item, { ...item, apiKey: "qa_nope_nope" }, item, item, item, item, item],
    });
    expect(r.results).toHaveLength(9);
    const kinds = r.results.map((x) => (x.result.case === "response" ? `decision ${x.result.value.decision}` : `error ${x.result.value?.code}`));
    expect(kinds[1]).toBe(`error ${status.INVALID_ARGUMENT}`);
    expect(r.results[1]!.result.case === "error" && r.results[1]!.result.value.message).toBe("requests[1].product: is required");
    expect(r.results[3]!.result.case === "response" && r.results[3]!.result.value.reason).toBe(DenyReason.KEY_INVALID);
    // 7 valid items against a quota of 5: exactly 5 admitted.
    const decided = r.results.filter((x, i) => i !== 1 && i !== 3).map((x) => (x.result.case === "response" ? x.result.value : undefined)!);
    expect(decided.filter((x) => x.decision === Decision.ALLOWED)).toHaveLength(5);
    expect(decided.filter((x) => x.decision === Decision.DENIED).every((x) => x.reason === DenyReason.QUOTA_EXHAUSTED)).toBe(true);
    expect(await daily(k.apiKey)).toMatchObject({ used: 5n, remaining: 0n });

    const ids = decided.filter((x) => x.decision === Decision.ALLOWED).map((x) => x.reservationId);
    const rel = await s.c.quota.releaseBatch({
      requests: [...ids.map((id) => ({ reservationId: id, outcome: Outcome.CANCEL })), { reservationId: "nope" }, { reservationId: ids[0]!, outcome: Outcome.CANCEL }],
    });
    expect(rel.results.slice(0, 5).map((x) => x.result.case === "response" && x.result.value.state)).toEqual(Array(5).fill(ReleaseState.CANCELLED));
    expect(rel.results[5]!.result).toMatchObject({ case: "error", value: { code: status.INVALID_ARGUMENT, message: "requests[5].reservation_id: is not a reservation id" } });
    // The repeat of an id within the batch is a replay of its first settlement.
    expect(rel.results[6]!.result.case === "response" && rel.results[6]!.result.value.replayed).toBe(true);
    expect(await daily(k.apiKey)).toMatchObject({ used: 0n });
  });

  it("refuses an empty batch and one over 1,000 items, naming the field", async () => {
    for (const n of [0, 1001]) {
      const e = await s.c.quota.checkAndReserveBatch({ requests: Array.from({ length: n }, () => ({ apiKey: "x", product: "p", method: "m" })) }).catch((x) => x);
      expect(codeOf(e)).toBe(status.INVALID_ARGUMENT);
      expect(messageOf(e)).toMatch(/^requests: must hold at (least 1|most 1000)/);
    }
  });

  it("grants at most a quarter of what remains, deducts it at once, and settles what was used", async () => {
    const k = await seedAccount(s.c, "l-quota");
    const a = await s.c.quota.lease({ apiKey: k.apiKey, product: "p", method: "heavy", calls: 100n });
    // 1000 units / 3 per call = 333 calls left; a quarter is 83 — less than the 100 asked.
    expect(a).toMatchObject({ decision: Decision.ALLOWED, grantedCalls: 83n, costPerCall: 3n });
    expect(await daily(k.apiKey)).toMatchObject({ used: 249n, remaining: 751n });
    // Settle it with 40 calls used and take the next one in the same call: 43 calls (129 units) come back first.
    const b = await s.c.quota.lease({ apiKey: k.apiKey, product: "p", method: "m", calls: 10n, close: [{ leaseId: a.leaseId, usedCalls: 40n }] });
    expect(b.closed).toHaveLength(1);
    expect(b.closed[0]).toMatchObject({ chargedCost: 120n, refundedCost: 129n });
    expect(b).toMatchObject({ decision: Decision.ALLOWED, grantedCalls: 10n, costPerCall: 1n });
    expect(await daily(k.apiKey)).toMatchObject({ used: 130n });
    // A lease settles within what it was granted: more used calls than granted is refused and changes nothing.
    const over = await s.c.quota.lease({ apiKey: k.apiKey, product: "p", method: "m", calls: 0n, close: [{ leaseId: b.leaseId, usedCalls: 11n }] }).catch((x) => x);
    expect(codeOf(over)).toBe(status.INVALID_ARGUMENT);
    expect(messageOf(over)).toBe("close[0].used_calls: must be between 0 and the 10 calls granted");
    expect(await daily(k.apiKey)).toMatchObject({ used: 130n });
    // An edited lease id (cheaper per call, or a larger grant) is not a lease: its signature does not match.
    for (const forged of [b.leaseId.replace(/^lease~1~0~10~/, "lease~0~0~10~"), b.leaseId.replace(/^lease~1~0~10~/, "lease~1~0~99~")]) {
      expect(forged).not.toBe(b.leaseId);
      const e = await s.c.quota.lease({ apiKey: k.apiKey, product: "p", method: "m", calls: 0n, close: [{ leaseId: forged, usedCalls: 5n }] }).catch((x) => x);
      expect(messageOf(e)).toBe("close[0].lease_id: is not a lease of this key");
    }
    expect(await daily(k.apiKey)).toMatchObject({ used: 130n });
    // A lease of another key cannot be closed with this one.
    const other = await seedAccount(s.c, "l-quota");
    const e = await s.c.quota.lease({ apiKey: other.apiKey, product: "p", method: "m", calls: 0n, close: [{ leaseId: b.leaseId, usedCalls: 0n }] }).catch((x) => x);
    expect(codeOf(e)).toBe(status.INVALID_ARGUMENT);
    expect(messageOf(e)).toBe("close[0].lease_id: is not a lease of this key");
  });

  it("shrinks near exhaustion down to one call, then denies with the quota's reason", async () => {
    const k = await seedAccount(s.c, "l-small");
    const grants: bigint[] = [];
    for (let i = 0; i < 20; i++) {
      const a = await s.c.quota.lease({ apiKey: k.apiKey, product: "p", method: "m", calls: 100n });
      if (a.decision !== Decision.ALLOWED) {
        expect(a.reason).toBe(DenyReason.QUOTA_EXHAUSTED);
        break;
      }
      grants.push(a.grantedCalls);
    }
    // 10 left: 2 (10/4), 2 (8/4), 1 (6/4), 1, 1, 1, 1, 1 — never more than remains, and together exactly the limit.
    expect(grants).toEqual([2n, 2n, 1n, 1n, 1n, 1n, 1n, 1n]);
    expect(grants.reduce((x, y) => x + y, 0n)).toBe(10n);
  });

  it("never outlives the period it draws on, and an unsettled lease is charged in full at expiry", async () => {
    const k = await seedAccount(s.c, "l-quota");
    // The daily period of a subscription started now ends 24 h from now; 5 s before it, a 10 s lease ends with it.
    const start = s.clock.now();
    s.clock.set(start + 86_400_000 - 5_000);
    const a = await s.c.quota.lease({ apiKey: k.apiKey, product: "p", method: "m", calls: 10n, ttl: { seconds: 10n } });
    expect(a.decision).toBe(Decision.ALLOWED);
    expect(timestampMs(a.expiresAt!)).toBe(start + 86_400_000);
    const k2 = await seedAccount(s.c, "l-quota");
    const b = await s.c.quota.lease({ apiKey: k2.apiKey, product: "p", method: "m", calls: 10n, ttl: { seconds: 2n } });
    s.clock.advance(2_000);
    expect(await daily(k2.apiKey)).toMatchObject({ used: b.grantedCalls }); // charged: its usage is unknown
  });

  it("refuses calls with rate limits (decided remotely only), naming the limit", async () => {
    const k = await seedAccount(s.c, "l-rate");
    const e = await s.c.quota.lease({ apiKey: k.apiKey, product: "p", method: "m", calls: 10n }).catch((x) => x);
    expect(codeOf(e)).toBe(status.FAILED_PRECONDITION);
    expect(messageOf(e)).toBe("limit rps (rate): decided remotely only — call CheckAndReserve for it");
    const bad = await s.c.quota.lease({ apiKey: k.apiKey, product: "p", method: "m", calls: 100_001n }).catch((x) => x);
    expect(messageOf(bad)).toBe("calls: must be between 0 and 100000");
  });

  it("4 client processes deciding locally on leases never admit more than the quota; settled, Redis holds exactly what they admitted", async () => {
    // Real time here: the workers compare the lease's end with their own clock.
    const t = await startTestApp({ clock: false });
    const c = clients("grpc-js", { grpc: t.app.grpcPort, http: t.app.httpPort });
    await c.admin.applyPlans({ document: PLANS }, ADMIN);
    const k = await seedAccount(c, "l-mp");
    const job: LeaseJob = { grpc: t.app.grpcPort, http: t.app.httpPort, apiKey: k.apiKey, product: "p", method: "m", ask: 100, startAt: Date.now() + 1500, deadlineMs: 30_000, halfEvery: 3 };
    const results = await Promise.all(
      Array.from({ length: 4 }, () =>
        new Promise<LeaseWorkerResult>((resolve, reject) => {
          const child = spawn(process.execPath, ["test/support/lease-worker.ts", JSON.stringify(job)], { cwd: REPO_ROOT, stdio: ["ignore", "pipe", "pipe"] });
          let out = "";
          let err = "";
          child.stdout.on("data", (d) => (out += d));
          child.stderr.on("data", (d) => (err += d));
          const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
          child.on("close", (code) => {
            clearTimeout(timer);
            if (code !== 0) reject(new Error(`lease worker exited ${code}: ${err}`));
            else resolve(JSON.parse(out.trim().split("\n").pop()!) as LeaseWorkerResult);
          });
        }),
      ),
    );
    const admitted = results.reduce((x, r) => x + r.admitted, 0);
    expect(admitted).toBeLessThanOrEqual(3000);
    // Every lease is settled: the counter holds exactly the calls admitted locally, the rest was given back.
    const monthly = (await c.quota.getLimits({ apiKey: k.apiKey })).subscriptions[0]!.limits.find((l) => l.name === "monthly")!;
    expect(monthly.used).toBe(BigInt(admitted));
    expect(results.every((r) => r.lastReason === "QUOTA_EXHAUSTED")).toBe(true);
    expect(results.reduce((x, r) => x + r.returned, 0)).toBeGreaterThan(0);
    // All four decided locally at the same time (their decision intervals overlap).
    const latestFirst = Math.max(...results.map((r) => r.firstAt));
    const earliestLast = Math.min(...results.map((r) => r.lastAt));
    expect(latestFirst).toBeLessThanOrEqual(earliestLast);
    // Under-admission near exhaustion: only calls given back when no process was left to take them, i.e. at most what
    // each process's last close returned (each lease at most a quarter of what remained when it was granted). Every
    // earlier return was taken again.
    const under = 3000 - admitted;
    expect(under).toBeLessThanOrEqual(results.reduce((x, r) => x + r.lastReturned, 0));
    console.log(`leases across 4 processes: admitted ${admitted} of 3000 (${under} under, bound ${results.reduce((x, r) => x + r.lastReturned, 0)}), ${results.reduce((x, r) => x + r.leases, 0)} leases`);
    c.close();
    await t.stop();
  }, 90_000);
});
