/**
 * Postgres that drops packets instead of refusing (issue 7, item 15), through a black-holing TCP proxy: a cached key
 * past its TTL is served at once (refreshed in the background), an unknown key and a TopUp answer UNAVAILABLE within
 * the configured Postgres timeouts instead of hanging, and everything works again when Postgres answers.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { status } from "@grpc/grpc-js";
import { Decision } from "../../src/gen/quota/v1/types_pb.ts";
import { startTestApp, type TestApp } from "../support/app.ts";
import { clients, codeOf, type Clients } from "../support/clients.ts";
import { applyPlans, deposit, seedAccount, type Seeded } from "../support/fixtures.ts";
import { TcpProxy } from "../support/tcp-proxy.ts";

const PLANS = `
plans:
  - id: stall-plan
    name: Stall
    limits:
      - { name: monthly, kind: quota, limit: 1000, period: monthly }
    topUp: { limit: monthly, increment: 100, price: { units: 100, amount: "1.00" } }
`;

/** The call's outcome, or "hung" when it has not answered within `ms` (the bug this test is about). */
async function answeredWithin<T>(ms: number, p: Promise<T>): Promise<{ ok: true; value: T } | { ok: false; error: unknown } | "hung"> {
  let timer: NodeJS.Timeout | undefined;
  const hung = new Promise<"hung">((resolve) => {
    timer = setTimeout(() => resolve("hung"), ms);
  });
  const r = await Promise.race([p.then((value) => ({ ok: true as const, value }), (error: unknown) => ({ ok: false as const, error })), hung]);
  clearTimeout(timer);
  return r;
}

describe("Postgres black-holed (TCP proxy that stops forwarding)", () => {
  let t: TestApp;
  let c: Clients;
  let proxy: TcpProxy;
  let s: Seeded;
  beforeAll(async () => {
    proxy = await TcpProxy.start(5432);
    t = await startTestApp({
      redis: false,
      wrapDatabaseUrl: (url) => url.replace(":5432/", `:${proxy.port}/`),
      env: { QUOTA_DB_CONNECT_TIMEOUT_MS: "1000", QUOTA_DB_STATEMENT_TIMEOUT_MS: "1000", QUOTA_KEY_CACHE_TTL_MS: "1000" },
    });
    c = clients("grpc-js", { grpc: t.app.grpcPort, http: t.app.httpPort });
    await applyPlans(c, PLANS);
    s = await seedAccount(c, "stall-plan");
    await deposit(c, s.accountId, "prepaid", 5n);
  });
  afterAll(async () => {
    c?.close();
    proxy?.restore();
    await t?.stop();
    await proxy?.close();
  });

  it("item 15: stale cached key served at once; unknown key and TopUp UNAVAILABLE within the timeouts; recovery", async () => {
    expect((await c.quota.checkAndReserve({ apiKey: s.apiKey, product: "p", method: "m" })).decision).toBe(Decision.ALLOWED);
    proxy.stall();
    t.clock.advance(5_000); // the cached entry is now past its TTL

    const stale = await answeredWithin(1_000, c.quota.checkAndReserve({ apiKey: s.apiKey, product: "p", method: "m" }));
    expect(stale !== "hung" && stale.ok && stale.value.decision).toBe(Decision.ALLOWED);

    // Connect (1 s) + statement (1 s + 0.5 s client-side) bound every Postgres call; 6 s is far past them.
    const unknown = await answeredWithin(6_000, c.quota.checkAndReserve({ keyId: "zzzzzzzzzzzzzzzz", product: "p", method: "m" }));
    expect(unknown).not.toBe("hung");
    expect(unknown !== "hung" && !unknown.ok && codeOf(unknown.error)).toBe(status.UNAVAILABLE);

    const topUp = await answeredWithin(6_000, c.quota.topUp({ apiKey: s.apiKey, idempotencyKey: "stalled", target: { case: "quota", value: { lines: [{ units: 100n }] } }, funding: { case: "fromWallet", value: {} } }));
    expect(topUp).not.toBe("hung");
    expect(topUp !== "hung" && !topUp.ok && codeOf(topUp.error)).toBe(status.UNAVAILABLE);

    proxy.restore();
    const deadline = Date.now() + 10_000;
    let again: Awaited<ReturnType<typeof c.quota.topUp>> | undefined;
    while (!again && Date.now() < deadline) {
      again = await c.quota.topUp({ apiKey: s.apiKey, idempotencyKey: "stalled", target: { case: "quota", value: { lines: [{ units: 100n }] } }, funding: { case: "fromWallet", value: {} } }).catch(() => undefined);
      if (!again) await new Promise((r) => setTimeout(r, 200));
    }
    expect(again?.newBalance?.units).toBe(4n); // applied once, after Postgres came back
  }, 60_000);
});
