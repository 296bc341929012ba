/** Seeding through the public admin API, as an operator would. */
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { ADMIN, type Clients } from "./clients.ts";
import { uniqueId } from "./env.ts";

export interface Seeded {
  accountId: string;
  subscriptionId: string;
  apiKey: string;
  keyId: string;
}

export async function applyPlans(c: Clients, yaml: string): Promise<void> {
  await c.admin.applyPlans({ document: yaml }, ADMIN);
}

export async function seedAccount(
  c: Clients,
  planId: string,
  opts: { startsAt?: number; endsAt?: number; accessBlocks?: string[]; addOns?: Record<string, string>; key?: { owner?: boolean; overageEnabled?: boolean; subLimits?: Record<string, bigint> }; accountId?: string } = {},
): Promise<Seeded> {
  const accountId = opts.accountId ?? uniqueId("acc").toLowerCase();
  if (!opts.accountId) await c.admin.createAccount({ id: accountId, name: `test ${accountId}` }, ADMIN);
  const sub = await c.admin.createSubscription(
    {
      accountId,
      planId,
      ...(opts.startsAt !== undefined ? { startsAt: timestampFromMs(opts.startsAt) as Timestamp } : {}),
      ...(opts.endsAt !== undefined ? { endsAt: timestampFromMs(opts.endsAt) as Timestamp } : {}),
      accessBlocks: opts.accessBlocks ?? [],
      addOns: opts.addOns ?? {},
    },
    ADMIN,
  );
  const key = await addKey(c, accountId, sub.subscription!.id, opts.key);
  return { accountId, subscriptionId: sub.subscription!.id, ...key };
}

export async function addKey(c: Clients, accountId: string, subscriptionId: string, opts: { owner?: boolean; overageEnabled?: boolean; subLimits?: Record<string, bigint> } = {}) {
  const k = await c.admin.createApiKey(
    { accountId, subscriptionId, name: "test", owner: opts.owner ?? true, overageEnabled: opts.overageEnabled ?? false, subLimits: opts.subLimits ?? {} },
    ADMIN,
  );
  return { apiKey: k.apiKey, keyId: k.key!.id };
}

export async function deposit(c: Clients, accountId: string, wallet: "prepaid" | "credit", dollars: bigint, reference = uniqueId("pay")) {
  return c.admin.deposit({ accountId, wallet, payment: { reference, amount: { currencyCode: "USD", units: dollars, nanos: 0 }, provider: "test" } }, ADMIN);
}
