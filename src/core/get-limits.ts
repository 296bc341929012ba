/**
 * GetLimits: everything a key (or, for trusted callers, an account) may know about its quota — plan, cycle, every
 * limit with used/remaining/reset and the sources of its capacity, wallets, active grants, keys. Limits are read
 * with a CHECK_ONLY evaluation (nothing changes).
 */
import { InvalidArgumentError, PermissionDeniedError, QuotaError, UnavailableError } from "./errors.ts";
import { resolveKey, type Caller } from "./key-auth.ts";
import { explainSources, toStatus, type LimitStatusOut } from "./limit-status.ts";
import { cycleOf, limitsForCall } from "./limits.ts";
import type { AccountConfig, KeyRecord, WalletKind } from "./ports.ts";
import { peekLimits, type QuotaDeps } from "./quota-deps.ts";
import { ACCOUNT_ID_RE, NAME_RE } from "./validation.ts";
import { grantOut, keyView, type GrantOut, type KeyViewOut } from "./views.ts";

export interface GetLimitsRequest {
  apiKey: string;
  keyId: string;
  accountId: string;
  product: string;
}

export interface SubscriptionViewOut {
  id: string;
  planId: string;
  planName: string;
  cycleStart: number;
  cycleEnd: number;
  validFrom: number;
  validUntil?: number;
  limits: LimitStatusOut[];
  addOns: Record<string, string>;
  accessBlocks: string[];
  status: string;
}

export interface GetLimitsAnswer {
  accountId: string;
  keyId: string;
  subscriptions: SubscriptionViewOut[];
  wallets: Array<{ kind: WalletKind; balance: bigint; totalDeposited: bigint }>;
  grants: GrantOut[];
  keys: KeyViewOut[];
  credit: { totalToppedUp: bigint; spent: bigint; remaining: bigint; creditKeys: number };
  asOf: number;
}

export async function getLimits(d: QuotaDeps, caller: Caller, req: GetLimitsRequest): Promise<GetLimitsAnswer> {
  if (req.product && !NAME_RE.test(req.product)) throw new InvalidArgumentError("product", "must be 1-63 characters of a-z 0-9 _ . -");
  let key: KeyRecord | undefined;
  let accountId = req.accountId;
  const given = [req.apiKey, req.keyId, req.accountId].filter(Boolean).length;
  if (given !== 1) throw new InvalidArgumentError("api_key", "give exactly one of api_key, key_id, account_id");
  if (caller.kind === "browser" && !req.apiKey) throw new PermissionDeniedError("browser callers must present their api_key");
  if (req.apiKey || req.keyId) {
    const { ctx, denial } = await resolveKey(d.keys, req.apiKey, req.keyId);
    if (!ctx || denial === "KEY_INVALID") throw new QuotaError("NOT_FOUND", "KEY_NOT_FOUND", "api key not found");
    if (denial === "KEY_REVOKED") throw new PermissionDeniedError("api key revoked");
    key = ctx.key;
    accountId = ctx.key.accountId;
  } else if (!ACCOUNT_ID_RE.test(accountId)) {
    throw new InvalidArgumentError("account_id", "is not an account id");
  }
  // Per key (a key holder may only read its own account), or per account for trusted callers.
  d.getLimitsLimiter.take(key ? `k:${key.id}` : `a:${accountId}`);
  const now = d.clock.now();
  let config: AccountConfig | null;
  try {
    // Cached briefly and dropped on any change to the account (change bus): repeated reads cost one wallet query
    // and one Redis call per subscription.
    config = await d.keys.accountConfig(accountId);
    // Wallet balances are read fresh: usage postings (the flusher) change them without a change-bus message.
    if (config) config = { ...config, wallets: await d.db.listWallets(accountId) };
  } catch (e) {
    throw new UnavailableError("database unreachable", { cause: e });
  }
  if (!config) throw new QuotaError("NOT_FOUND", "ACCOUNT_NOT_FOUND", `account ${JSON.stringify(accountId)} not found`);

  const subs = key ? config.subscriptions.filter((s) => s.id === key!.subscriptionId) : config.subscriptions;
  const views: SubscriptionViewOut[] = [];
  let spent = 0n;
  let asOf = now;
  for (const sub of subs) {
    const planRec = config.plans.get(sub.planId);
    if (!planRec) continue;
    const applied = limitsForCall(planRec.spec, sub, key, req.product, { units: 0n, spend: 0n, meters: {} }, now, { allProducts: !req.product })
      .map((a) => ({ ...a, counter: { ...a.counter, amount: 0n } }));
    const states = await peekLimits(d, accountId, applied, req.product);
    asOf = states.now;
    const limits = applied.map((a, i) => explainSources(toStatus(a, states.states[i]), planRec.spec, sub));
    for (const l of limits) if (l.kind === "BUDGET") spent = l.used + l.overage;
    const cycle = cycleOf(sub, now);
    const view: SubscriptionViewOut = {
      id: sub.id,
      planId: sub.planId,
      planName: planRec.name,
      cycleStart: cycle.start,
      cycleEnd: cycle.end,
      validFrom: sub.startsAt.getTime(),
      limits,
      addOns: sub.addOns,
      accessBlocks: sub.accessBlocks,
      status: sub.status === "cancelled" ? "cancelled" : sub.endsAt && sub.endsAt.getTime() <= now ? "ended" : sub.startsAt.getTime() > now ? "scheduled" : "active",
    };
    if (sub.endsAt) view.validUntil = sub.endsAt.getTime();
    views.push(view);
  }
  const credit = config.wallets.find((w) => w.kind === "credit");
  const creditKeys = config.keys.filter((k) => {
    const sub = config!.subscriptions.find((s) => s.id === k.subscriptionId);
    return k.status === "active" && sub && config!.plans.get(sub.planId)?.spec.limits.some((l) => l.kind === "budget");
  }).length;
  const totalToppedUp = credit?.totalDeposited ?? 0n;
  const subIds = new Set(subs.map((s) => s.id));
  return {
    accountId,
    keyId: key?.id ?? "",
    subscriptions: views,
    wallets: (["prepaid", "credit"] as const).map((kind) => {
      const w = config!.wallets.find((x) => x.kind === kind);
      return { kind, balance: w?.balance ?? 0n, totalDeposited: w?.totalDeposited ?? 0n };
    }),
    grants: config.grants.filter((g) => subIds.has(g.subscriptionId)).map(grantOut),
    keys: (key ? [key] : config.keys).map((k) => keyView(k, now)),
    credit: { totalToppedUp, spent, remaining: totalToppedUp > spent ? totalToppedUp - spent : 0n, creditKeys },
    asOf,
  };
}
