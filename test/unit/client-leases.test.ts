/**
 * The client's LeaseManager against a fake Lease RPC: one lease per (key, product, method), found again by the
 * caller's strings (no key string built per decision), and an idle one settled at its end and forgotten, so what it
 * keeps is bounded by the combinations in use.
 */
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { LeaseManager, MAX_REMOTE_ONLY } from "../../packages/client/src/leases.ts";
import { LeaseResponseSchema, type LeaseRequest } from "../../packages/client/src/gen/quota/v1/quota_pb.ts";
import { Decision } from "../../packages/client/src/gen/quota/v1/types_pb.ts";

/** A Lease RPC: grants `granted` calls; `answer` may replace the grant (a denial, LEASE_REMOTE_ONLY); a settle-only
 * call (calls = 0) takes `settleMs`. */
function fakeRpc(granted: bigint, opts: { settleMs?: number; answer?: (req: LeaseRequest) => "deny" | "remote" | undefined } = {}) {
  const calls: LeaseRequest[] = [];
  let n = 0;
  const rpc = {
    lease: async (req: LeaseRequest) => {
      calls.push(req);
      if (req.calls === 0n) {
        if (opts.settleMs) await new Promise((r) => setTimeout(r, opts.settleMs));
        return create(LeaseResponseSchema, {});
      }
      const a = opts.answer?.(req);
      if (a === "deny") return create(LeaseResponseSchema, { decision: Decision.DENIED });
      if (a === "remote") throw new ConnectError("rate limits are decided remotely", Code.FailedPrecondition, { "x-error-reason": "LEASE_REMOTE_ONLY" });
      return create(LeaseResponseSchema, { decision: Decision.ALLOWED, leaseId: `lease-${++n}`, grantedCalls: granted, costPerCall: 1n });
    },
  };
  return { rpc: rpc as unknown as ConstructorParameters<typeof LeaseManager>[0], calls };
}

const call = { timeoutMs: 1000 };

describe("client LeaseManager", () => {
  it("keeps one lease per (key, product, method) and tells API keys from key ids", async () => {
    const { rpc, calls } = fakeRpc(10n);
    const m = new LeaseManager(rpc, { calls: 10, ttlMs: 60_000, remoteOnlyRecheckMs: 60_000 });
    const refs = [
      { apiKey: "qa_k1_s", keyId: "", product: "p", method: "m" },
      { apiKey: "qa_k1_s", keyId: "", product: "p", method: "m2" },
      { apiKey: "qa_k1_s", keyId: "", product: "p2", method: "m" },
      { apiKey: "", keyId: "qa_k1_s", product: "p", method: "m" }, // a key id spelled like the API key: not the same
    ];
    for (let round = 0; round < 3; round++) {
      for (const r of refs) {
        // A fresh copy of the strings each time: found by value, not by identity.
        const d = await m.decide({ apiKey: `${r.apiKey}`, keyId: `${r.keyId}`, product: `${r.product}`, method: `${r.method}` }, call);
        expect(d.local?.info.leaseId).toMatch(/^lease-\d$/);
      }
    }
    expect(calls).toHaveLength(4);
    expect(m.size).toBe(4);
    expect(calls.map((c) => [c.apiKey, c.keyId, c.product, c.method])).toEqual(refs.map((r) => [r.apiKey, r.keyId, r.product, r.method]));
    await m.close(1000);
    // Each lease settled with its use (3 calls each), and nothing kept.
    expect(calls.slice(4).flatMap((c) => c.close.map((x) => x.usedCalls))).toEqual([3n, 3n, 3n, 3n]);
    expect(m.size).toBe(0);
  });

  it("settles an idle lease at its end and forgets its key", async () => {
    const { rpc, calls } = fakeRpc(10n);
    const m = new LeaseManager(rpc, { calls: 10, ttlMs: 1000, remoteOnlyRecheckMs: 60_000 });
    const d = await m.decide({ apiKey: "qa_k2_s", keyId: "", product: "p", method: "m" }, call);
    expect(d.local?.info.remainingCalls).toBe(9);
    expect(m.size).toBe(1);
    // Usable until its end less the margin (100 ms for a 1 s TTL); used only at its start: idle, so not renewed.
    await new Promise((r) => setTimeout(r, 1200));
    expect(calls).toHaveLength(2);
    expect(calls[1]).toMatchObject({ calls: 0n, close: [{ leaseId: "lease-1", usedCalls: 1n }] });
    expect(m.size).toBe(0);
  });

  it("a caller that waited on an idle lease's settlement takes its new lease on the state in use, which close() settles", async () => {
    const { rpc, calls } = fakeRpc(10n, { settleMs: 300 });
    const m = new LeaseManager(rpc, { calls: 10, ttlMs: 1000, remoteOnlyRecheckMs: 60_000 });
    const ref = { apiKey: "qa_k3_s", keyId: "", product: "p", method: "m" };
    expect((await m.decide(ref, call)).local?.info.leaseId).toBe("lease-1");
    // At ~900 ms the idle lease is settled (300 ms); a call made meanwhile waits for that settlement, then leases.
    await new Promise((r) => setTimeout(r, 1000));
    const d = await m.decide(ref, call);
    expect(d.local?.info.leaseId).toBe("lease-2");
    expect(m.size).toBe(1);
    await m.close(1000);
    expect(calls.at(-1)).toMatchObject({ calls: 0n, close: [{ leaseId: "lease-2", usedCalls: 1n }] });
    expect(m.size).toBe(0);
  });

  it("keeps nothing for keys it was denied, and a bounded set of remote-only ones", async () => {
    const { rpc } = fakeRpc(10n, { answer: (req) => (req.apiKey.startsWith("qa_deny") ? "deny" : req.apiKey.startsWith("qa_rate") ? "remote" : undefined) });
    const m = new LeaseManager(rpc, { calls: 10, ttlMs: 60_000, remoteOnlyRecheckMs: 60_000 });
    for (let i = 0; i < 100; i++) expect((await m.decide({ apiKey: `qa_deny${i}_s`, keyId: "", product: "p", method: "m" }, call)).denied).toBeDefined();
    expect(m.size).toBe(0);
    for (let i = 0; i < MAX_REMOTE_ONLY + 50; i++) expect((await m.decide({ apiKey: `qa_rate${i}_s`, keyId: "", product: "p", method: "m" }, call)).remote).toBe(true);
    expect(m.size).toBe(MAX_REMOTE_ONLY);
    // The most recent are the ones remembered: no Lease call for them while the recheck interval runs.
    const before = m.rpcs;
    expect((await m.decide({ apiKey: `qa_rate${MAX_REMOTE_ONLY + 49}_s`, keyId: "", product: "p", method: "m" }, call)).remote).toBe(true);
    expect(m.rpcs).toBe(before);
    await m.close(1000);
  });

  it("forgets a key whose busy lease could not be renewed (the quota ran out), waited on or not", async () => {
    let n = 0;
    const { rpc, calls } = fakeRpc(10n, { answer: (req) => (req.calls > 0n && ++n > 1 ? "deny" : undefined) });
    const m = new LeaseManager(rpc, { calls: 10, ttlMs: 1000, remoteOnlyRecheckMs: 60_000 });
    const ref = { apiKey: "qa_k4_s", keyId: "", product: "p", method: "m" };
    expect((await m.decide(ref, call)).local).toBeDefined();
    // Used again in its second half: busy, so at its end (~900 ms) the client renews it, and the server refuses.
    await new Promise((r) => setTimeout(r, 500));
    expect((await m.decide(ref, call)).local).toBeDefined();
    await new Promise((r) => setTimeout(r, 700));
    expect(calls).toHaveLength(2);
    expect(calls[1]).toMatchObject({ calls: 10n, close: [{ leaseId: "lease-1", usedCalls: 2n }] });
    expect(m.size).toBe(0);
  });
});
