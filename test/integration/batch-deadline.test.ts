/**
 * The counter-store deadline of a batch: a message of N decisions is N decisions of Redis work queued at once, so
 * each item gets the service's deadline plus 1 ms per item of the message (batch.ts). A busy but healthy Redis must
 * not answer a large batch UNAVAILABLE; a single call keeps the service's deadline (fail closed past it).
 * Found by the bench: CheckAndReserveBatch of 100 under load answered every item "UNAVAILABLE: store deadline".
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { CounterStore } from "../../src/core/counter-store.ts";
import { Decision, DenyReason } from "../../src/gen/quota/v1/types_pb.ts";
import { startTestApp, type TestApp } from "../support/app.ts";
import { ADMIN, clients, type Clients } from "../support/clients.ts";
import { seedAccount } from "../support/fixtures.ts";

const PLANS = `
plans:
  - id: dl-quota
    name: quota 1000 a day, fail closed
    failureMode: closed
    limits: [{ name: daily, kind: quota, limit: 1000, period: daily }]
`;

/** Every reserve answers `delayMs` late (a busy Redis): the answer is right, only slow. */
function slowReserves(inner: CounterStore, delay: { ms: number }): CounterStore {
  return new Proxy(inner, {
    get(target, prop, receiver) {
      if (prop === "reserve") {
        return async (cmd: Parameters<CounterStore["reserve"]>[0]) => {
          const r = await target.reserve(cmd);
          if (delay.ms > 0) await new Promise((res) => setTimeout(res, delay.ms));
          return r;
        };
      }
      const v = Reflect.get(target, prop, receiver) as unknown;
      return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}

describe("batch store deadline", () => {
  let t: TestApp;
  let c: Clients;
  const delay = { ms: 0 };

  beforeAll(async () => {
    t = await startTestApp({ clock: false, env: { QUOTA_STORE_DEADLINE_MS: "50" }, wrapStore: (inner) => slowReserves(inner, delay) });
    c = clients("grpc-js", { grpc: t.app.grpcPort, http: t.app.httpPort });
    await c.admin.applyPlans({ document: PLANS }, ADMIN);
  });
  afterAll(async () => {
    c?.close();
    await t?.stop();
  });

  it("gives a batch of N items the service's deadline + N ms; a single call keeps the service's", async () => {
    const k = await seedAccount(c, "dl-quota");
    const item = { apiKey: k.apiKey, product: "p", method: "m" };
    await c.quota.checkAndReserve(item); // first touch restores the account (not delayed work we measure)
    delay.ms = 120; // the store answers 120 ms late: past the 50 ms deadline, within 50 + 400
    const single = await c.quota.checkAndReserve(item);
    expect(single).toMatchObject({ decision: Decision.DENIED, reason: DenyReason.UNAVAILABLE });
    const batch = await c.quota.checkAndReserveBatch({ requests: Array.from({ length: 400 }, () => item) });
    const decisions = batch.results.map((r) => (r.result.case === "response" ? r.result.value.decision : undefined));
    expect(decisions.every((d) => d === Decision.ALLOWED)).toBe(true);
    delay.ms = 0;
  });
});
