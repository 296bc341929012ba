/** The control plane: plan versions, idempotent creates, key revocation and cancellation taking effect at once. */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Decision, DenyReason } from "../../src/gen/quota/v1/types_pb.ts";
import { startTestApp, type TestApp } from "../support/app.ts";
import { ADMIN, clients, type Clients } from "../support/clients.ts";
import { deposit, seedAccount } from "../support/fixtures.ts";

const PLAN = (limit: number, id = "admin-plan") => `
plans:
  - id: ${id}
    name: admin plan
    limits: [{ name: monthly, kind: quota, limit: ${limit}, period: monthly }]
`;

describe("admin (gRPC, Postgres, Redis)", () => {
  let t: TestApp;
  let c: Clients;
  beforeAll(async () => {
    t = await startTestApp({ clock: false });
    c = clients("grpc-js", { grpc: t.app.grpcPort, http: t.app.httpPort });
    // The plan the other tests seed accounts on; the versioning test has a plan of its own (any order works).
    await c.admin.applyPlans({ document: PLAN(10) }, ADMIN);
  });
  afterAll(async () => {
    c?.close();
    await t?.stop();
  });

  it("versions plans: re-applying the same document changes nothing; a change takes effect for existing subscriptions", async () => {
    const v1 = await c.admin.applyPlans({ document: PLAN(10, "admin-versions") }, ADMIN);
    const again = await c.admin.applyPlans({ document: PLAN(10, "admin-versions") }, ADMIN);
    expect(again.plans[0]!.version).toBe(v1.plans[0]!.version);
    const s = await seedAccount(c, "admin-versions");
    expect((await c.quota.checkAndReserve({ apiKey: s.apiKey, product: "api", method: "get" })).limits[0]!.limit).toBe(10n);
    const v2 = await c.admin.applyPlans({ document: PLAN(20, "admin-versions") }, ADMIN);
    expect(v2.plans[0]!.version).toBe(v1.plans[0]!.version + 1);
    expect((await c.quota.checkAndReserve({ apiKey: s.apiKey, product: "api", method: "get" })).limits[0]!.limit).toBe(20n);
  });

  it("makes creates idempotent on request_id and shows a key's secret only once", async () => {
    const a1 = await c.admin.createAccount({ name: "idem", requestId: "acct-req-1" }, ADMIN);
    const a2 = await c.admin.createAccount({ name: "idem", requestId: "acct-req-1" }, ADMIN);
    expect(a2.account!.id).toBe(a1.account!.id);
    const sub = await c.admin.createSubscription({ accountId: a1.account!.id, planId: "admin-plan", requestId: "sub-req-1" }, ADMIN);
    const k1 = await c.admin.createApiKey({ accountId: a1.account!.id, subscriptionId: sub.subscription!.id, requestId: "key-req-1" }, ADMIN);
    const k2 = await c.admin.createApiKey({ accountId: a1.account!.id, subscriptionId: sub.subscription!.id, requestId: "key-req-1" }, ADMIN);
    expect(k1.apiKey).toMatch(/^qa_[a-z2-7]{16}_[A-Za-z0-9_-]{43}$/);
    expect(k2).toMatchObject({ apiKey: "", key: { id: k1.key!.id } });
    expect((await c.admin.listApiKeys({ accountId: a1.account!.id }, ADMIN)).keys).toHaveLength(1);
  });

  it("revokes keys and cancels subscriptions with immediate effect on the hot path", async () => {
    const s = await seedAccount(c, "admin-plan");
    const call = () => c.quota.checkAndReserve({ apiKey: s.apiKey, product: "api", method: "get" });
    expect((await call()).decision).toBe(Decision.ALLOWED); // the key is now cached
    await c.admin.revokeApiKey({ keyId: s.keyId }, ADMIN);
    expect(await call()).toMatchObject({ decision: Decision.DENIED, reason: DenyReason.KEY_REVOKED });
    const other = await seedAccount(c, "admin-plan");
    expect((await c.quota.checkAndReserve({ apiKey: other.apiKey, product: "api", method: "get" })).decision).toBe(Decision.ALLOWED);
    await c.admin.cancelSubscription({ subscriptionId: other.subscriptionId }, ADMIN);
    expect(await c.quota.checkAndReserve({ apiKey: other.apiKey, product: "api", method: "get" })).toMatchObject({ decision: Decision.DENIED, reason: DenyReason.SUBSCRIPTION_ENDED });
  });

  it("pages through the ledger newest first", async () => {
    const s = await seedAccount(c, "admin-plan");
    for (let i = 0; i < 5; i++) await deposit(c, s.accountId, "prepaid", BigInt(i + 1));
    const first = await c.admin.listLedger({ accountId: s.accountId, pageSize: 2 }, ADMIN);
    const second = await c.admin.listLedger({ accountId: s.accountId, pageSize: 2, pageToken: first.nextPageToken }, ADMIN);
    const third = await c.admin.listLedger({ accountId: s.accountId, pageSize: 2, pageToken: second.nextPageToken }, ADMIN);
    const amounts = [...first.transactions, ...second.transactions, ...third.transactions].map((x) => x.postings[1]!.amountMicros / 1_000_000n);
    expect(amounts).toEqual([5n, 4n, 3n, 2n, 1n]);
    expect(third.nextPageToken).toBe("");
  });
});
