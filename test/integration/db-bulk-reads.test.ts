/**
 * The bulk reads of a first touch (loadKeyContexts, loadAccountConfigs, loadUsageSnapshots) read rows through
 * MikroORM's query builder as plain objects, not as managed entities (src/store/db/mikro-database.ts `rows`). What
 * they answer must be exactly what was written, with the same types the entity reads give (Date, bigint beyond 2^53,
 * JSON, booleans, nulls), on both databases the service runs on: real Postgres and the embedded PGlite. Each case is
 * also compared with the entity-based reads of a unit of work (getAccount, listSubscriptions, getKey, ...).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { MikroORM } from "@mikro-orm/postgresql";
import { parsePlansDocument } from "../../src/core/plan.ts";
import type { GrantRecord, KeyRecord, SubscriptionRecord, WalletRecord } from "../../src/core/ports.ts";
import { MikroDatabase } from "../../src/store/db/mikro-database.ts";
import { migrate, openOrm } from "../../src/store/db/orm.ts";
import { createTestDatabase } from "../support/app.ts";

const [planSpec] = parsePlansDocument(`
plans:
  - id: bulk-plan
    name: bulk plan
    methods: { default: 1 }
    limits:
      - { name: monthly, kind: quota, limit: 1000, period: monthly }
      - { name: rps, kind: rate, scope: key, limit: 10, window: 1s }
`);

const NOW = new Date("2026-12-03T12:00:00.123Z");
const at = (ms: number) => new Date(NOW.getTime() + ms);
const HUGE = 9_007_199_254_740_993n; // 2^53 + 1: not a double

const account = { id: "acct-bulk", name: "Bulk reads", createdAt: at(-86_400_000), capacityVersion: 3, capacitySynced: 2 };
const subs: SubscriptionRecord[] = [
  { id: "sub-open", accountId: account.id, planId: "bulk-plan", startsAt: at(-50_000), endsAt: null, accessBlocks: ["09:00-17:00"], addOns: { extra: "pack-1" }, status: "active", createdAt: at(-40_000) },
  { id: "sub-ended", accountId: account.id, planId: "bulk-plan", startsAt: at(-90_000), endsAt: at(-1_000), accessBlocks: [], addOns: {}, status: "cancelled", createdAt: at(-30_000) },
];
const keys: KeyRecord[] = [
  { id: "KEYBULKAAAAAAAAAAAAAAAAAAAAAAAAA", accountId: account.id, subscriptionId: "sub-open", name: "first", secretHash: "a".repeat(64), status: "active", owner: true, overage: false, subLimits: { monthly: HUGE }, expiresAt: null, createdAt: at(-20_000) },
  { id: "KEYBULKBBBBBBBBBBBBBBBBBBBBBBBBB", accountId: account.id, subscriptionId: "sub-ended", name: "second", secretHash: "b".repeat(64), status: "revoked", owner: false, overage: true, subLimits: {}, expiresAt: at(3_600_000), createdAt: at(-10_000) },
];
const grant = (id: string, validUntil: Date | null, createdAt: Date): GrantRecord => ({
  id, accountId: account.id, subscriptionId: "sub-open", limitName: "monthly", product: "", amount: HUGE, priority: 7, validFrom: at(-5_000), validUntil, source: "topup", transactionId: `tx-${id}`, createdAt,
});
const grants = [grant("g-forever", null, at(-9_000)), grant("g-later", at(60_000), at(-8_000)), grant("g-gone", at(-1), at(-7_000))];
const wallets: WalletRecord[] = [
  { accountId: account.id, kind: "prepaid", balance: HUGE, totalDeposited: HUGE + 5n, spentPosted: 0n },
  { accountId: account.id, kind: "credit", balance: 0n, totalDeposited: 12n, spentPosted: 3n },
];
const snapshot = { "s:sub-open:monthly": { win: "1764547200000", b: "42", o: "0", ot: "7" }, "k:KEYBULKAAAAAAAAAAAAAAAAAAAAAAAAA:rps": { n: "3" } };

describe.each(["postgres", "pglite"] as const)("bulk reads of a first touch on %s", (kind) => {
  let orm: MikroORM;
  let db: MikroDatabase;
  let drop = async () => {};
  beforeAll(async () => {
    const pg = kind === "postgres" ? await createTestDatabase() : undefined;
    if (pg) drop = pg.drop;
    orm = (await openOrm(pg ? { url: pg.url } : { dataDir: "memory://" })) as unknown as MikroORM;
    await migrate(orm as never);
    db = new MikroDatabase(orm);
    await db.transaction(async (u) => {
      await u.insertAccount(account);
      await u.upsertPlan({ id: "bulk-plan", name: "bulk plan", spec: planSpec! });
      for (const s of subs) await u.insertSubscription(s);
      for (const k of keys) await u.insertKey(k);
      for (const g of grants) await u.insertGrant(g);
      for (const w of wallets) {
        await u.lockWallet(w.accountId, w.kind); // creates it at zero
        await u.saveWallet(w);
      }
    });
    await db.saveUsageSnapshots([{ accountId: account.id, states: snapshot }]);
  }, 60_000);
  afterAll(async () => {
    await orm?.close(true);
    await drop();
  });

  it("loadAccountConfigs answers every record as written, with its types", async () => {
    const c = (await db.loadAccountConfigs([account.id, "acct-missing"], NOW)).get(account.id)!;
    expect(c.account).toEqual(account);
    expect(c.subscriptions).toEqual(subs.slice().sort((a, b) => a.createdAt.getTime() - b.createdAt.getTime()));
    expect(c.keys).toEqual(keys);
    // the expired grant is not answered
    expect(c.grants).toEqual(grants.slice(0, 2));
    expect([...c.wallets].sort((a, b) => a.kind.localeCompare(b.kind))).toEqual([wallets[1], wallets[0]]);
    expect([...c.plans.keys()]).toEqual(["bulk-plan"]);
    expect(c.plans.get("bulk-plan")!.spec).toEqual(planSpec);
    expect(typeof c.wallets[0]!.balance).toBe("bigint");
    expect(c.account.createdAt).toBeInstanceOf(Date);
    expect((await db.loadAccountConfigs(["acct-missing"], NOW)).size).toBe(0);
  });

  it("agrees with the entity reads of a unit of work", async () => {
    const c = (await db.loadAccountConfigs([account.id], NOW)).get(account.id)!;
    await db.transaction(async (u) => {
      expect(c.account).toEqual(await u.getAccount(account.id));
      expect(c.subscriptions).toEqual(await u.listSubscriptions(account.id));
      for (const k of c.keys) expect(k).toEqual(await u.getKey(k.id));
      expect(c.grants).toEqual(await u.listActiveGrants("sub-open", NOW));
      for (const w of c.wallets) expect(w).toEqual(await u.getWallet(w.accountId, w.kind));
      expect(c.plans.get("bulk-plan")).toEqual(await u.getPlan("bulk-plan"));
    });
  });

  it("loadKeyContexts answers each key with its subscription and plan", async () => {
    const ctx = await db.loadKeyContexts([keys[0]!.id, keys[1]!.id, "KEYMISSINGXXXXXXXXXXXXXXXXXXXXXX"]);
    expect([...ctx.keys()].sort()).toEqual([keys[0]!.id, keys[1]!.id]);
    expect(ctx.get(keys[0]!.id)!.key).toEqual(keys[0]);
    expect(ctx.get(keys[0]!.id)!.subscription).toEqual(subs[0]);
    expect(ctx.get(keys[1]!.id)!.subscription).toEqual(subs[1]);
    expect(ctx.get(keys[1]!.id)!.plan.spec).toEqual(planSpec);
  });

  it("loadUsageSnapshots answers the states as saved", async () => {
    const got = await db.loadUsageSnapshots([account.id, "acct-missing"]);
    expect(got.get(account.id)).toEqual(snapshot);
    expect(got.has("acct-missing")).toBe(false);
  });
});
