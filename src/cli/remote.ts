/**
 * The `quota-authority` commands that talk to a running server over gRPC (the gRPC port, default
 * 127.0.0.1:50051; `--server` or QUOTA_SERVER): operators' admin calls with QUOTA_ADMIN_TOKEN, and the data-plane
 * calls (`topup`, `limits`, `check`) with QUOTA_SERVICE_TOKEN (not needed when the server has none). Every command
 * has `--help` and `--json` (the answer as protobuf JSON); every failure exits non-zero with one clear line:
 * 2 for a usage mistake, 1 for an error the server (or the connection to it) reported.
 */
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { parseArgs, type ParseArgsConfig } from "node:util";
import { create, toJson, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { timestampDate, timestampFromDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { QuotaError } from "../core/errors.ts";
import { formatMicros, microsToMoney, parseDecimalMicros } from "../core/money.ts";
import { parsePlansDocument } from "../core/plan.ts";
import { QuotaAdminService } from "../gen/quota/v1/admin_pb.ts";
import { QuotaService, type GetLimitsResponse } from "../gen/quota/v1/quota_pb.ts";
import { Decision, DenyReason, LimitKind, Mode, Scope, type LimitStatus, type Money } from "../gen/quota/v1/types_pb.ts";

/** A mistake in how the command was called (exit 2). */
export class UsageError extends Error {}

type Options = NonNullable<ParseArgsConfig["options"]>;

interface Ctx {
  values: Record<string, string | boolean | string[] | undefined>;
  args: string[];
  json: boolean;
  env: NodeJS.ProcessEnv;
  admin(): Client<typeof QuotaAdminService>;
  quota(): Client<typeof QuotaService>;
  out(line?: string): void;
}

interface Command {
  /** "accounts create" */
  name: string;
  summary: string;
  /** Positional arguments, e.g. "ACCOUNT_ID". */
  usage?: string;
  options?: Options;
  /** One line per option, in order: flag -> meaning. */
  help?: Array<[string, string]>;
  /** Returns the exit code (0 unless the command says otherwise, e.g. `--exit-code`). */
  run(ctx: Ctx): Promise<number | void>;
}

const COMMON_HELP: Array<[string, string]> = [
  ["--server ADDR", "gRPC address of the server (host:port, http:// or https://); default QUOTA_SERVER or 127.0.0.1:50051"],
  ["--json", "print the answer as JSON (protobuf JSON mapping: int64 as strings)"],
  ["-h, --help", "this help"],
];

// ------------------------------------------------------------------ value parsing (usage errors name the flag)

function str(ctx: Ctx, name: string, required = false): string {
  const v = ctx.values[name];
  if (typeof v === "string" && v.trim() !== "") return v.trim();
  if (required) throw new UsageError(`--${name} is required`);
  return "";
}

function positional(ctx: Ctx, what: string): string {
  const v = ctx.args[0];
  if (!v) throw new UsageError(`${what} is required`);
  if (ctx.args.length > 1) throw new UsageError(`unexpected argument ${JSON.stringify(ctx.args[1])}`);
  return v;
}

function int64(flag: string, text: string, { positive = true } = {}): bigint {
  const s = text.trim().replaceAll("_", "").replaceAll(",", "");
  if (!/^-?\d{1,19}$/.test(s)) throw new UsageError(`--${flag}: ${JSON.stringify(text)} is not a whole number`);
  const n = BigInt(s);
  if (positive && n <= 0n) throw new UsageError(`--${flag}: must be greater than zero`);
  return n;
}

function usd(flag: string, text: string): Money {
  let micros: bigint;
  try {
    micros = parseDecimalMicros(flag, text.replace(/^\$/, ""));
  } catch {
    throw new UsageError(`--${flag}: ${JSON.stringify(text)} is not an amount in dollars (like 10 or 2.50, at most 6 decimals)`);
  }
  if (micros <= 0n) throw new UsageError(`--${flag}: must be greater than zero`);
  return { $typeName: "quota.v1.Money", ...microsToMoney(micros) };
}

function instant(flag: string, text: string): Timestamp {
  const d = new Date(text);
  if (!/^\d{4}-\d\d-\d\d/.test(text) || Number.isNaN(d.getTime())) throw new UsageError(`--${flag}: ${JSON.stringify(text)} is not an ISO-8601 time (like 2026-01-31T10:00:00Z)`);
  return timestampFromDate(d);
}

/** Repeated NAME=VALUE flags into a map. */
function pairs(ctx: Ctx, flag: string): Array<[string, string]> {
  const raw = ctx.values[flag];
  const list = Array.isArray(raw) ? raw : typeof raw === "string" ? [raw] : [];
  return list.map((p) => {
    const i = p.indexOf("=");
    if (i <= 0 || i === p.length - 1) throw new UsageError(`--${flag}: ${JSON.stringify(p)} is not NAME=VALUE`);
    return [p.slice(0, i), p.slice(i + 1)];
  });
}

function list(ctx: Ctx, flag: string): string[] {
  const raw = ctx.values[flag];
  return (Array.isArray(raw) ? raw : typeof raw === "string" ? [raw] : []).flatMap((s) => s.split(",")).map((s) => s.trim()).filter(Boolean);
}

// ------------------------------------------------------------------ output

const money = (m: Money | undefined): string => (m ? `${formatMicros(m.units * 1_000_000n + BigInt(Math.trunc(m.nanos / 1000)))} ${m.currencyCode || "USD"}` : "—");
const when = (t: Timestamp | undefined): string => (t ? timestampDate(t).toISOString().replace(".000Z", "Z") : "—");
const count = (n: bigint): string => n.toString().replace(/\B(?=(\d{3})+(?!\d))/g, ",");

function printJson<D extends DescMessage>(ctx: Ctx, schema: D, msg: MessageShape<D>): void {
  ctx.out(JSON.stringify(toJson(schema, msg, { alwaysEmitImplicit: false }), null, 2));
}

/** Rows as aligned columns (the first row is the header). */
export function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => [...(r[i] ?? "")].length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join("  ").trimEnd()).join("\n");
}

/** A text bar: used/limit in `width` cells, e.g. "[██████░░░░░░░░░░░░░░]  30%". */
export function bar(used: bigint, limit: bigint, width = 20): string {
  const ratio = limit <= 0n ? (used > 0n ? 1 : 0) : used >= limit ? 1 : Number((used * 1000n) / limit) / 1000;
  const filled = Math.round(ratio * width);
  const pct = limit <= 0n ? "" : ` ${String(Math.floor(Number((used * 100n) / limit))).padStart(3)}%`;
  return `[${"█".repeat(filled)}${"░".repeat(width - filled)}]${pct}`;
}

const REASON: Record<number, string> = Object.fromEntries(Object.entries(DenyReason).map(([k, v]) => [v, k]));
const KIND: Record<number, string> = { [LimitKind.RATE]: "rate", [LimitKind.QUOTA]: "quota", [LimitKind.CONCURRENCY]: "concurrency", [LimitKind.BUDGET]: "budget", [LimitKind.ACCESS_WINDOW]: "window" };
const SCOPE: Record<number, string> = { [Scope.KEY]: "key", [Scope.SUBSCRIPTION]: "subscription", [Scope.ACCOUNT]: "account" };

function limitRows(limits: LimitStatus[]): string {
  const rows = [["LIMIT", "KIND", "SCOPE", "USED", "LIMIT", "REMAINING", "USAGE", "RESETS", "SOURCES"]];
  for (const l of limits) {
    rows.push([
      l.name + (l.product ? ` (${l.product})` : ""),
      KIND[l.kind] ?? "?",
      SCOPE[l.scope] ?? "?",
      count(l.used),
      count(l.limit),
      count(l.remaining),
      bar(l.used, l.limit),
      when(l.resetsAt),
      l.sources.map((s) => `${s.kind}${s.id && s.kind !== "plan" ? ` ${s.id}` : ""} ${count(s.amount)}`).join(", "),
    ]);
  }
  return table(rows);
}

export function renderLimits(v: GetLimitsResponse): string {
  const out: string[] = [`account ${v.accountId}${v.keyId ? `, key ${v.keyId}` : ""} (as of ${when(v.asOf)})`];
  for (const s of v.subscriptions) {
    out.push("", `subscription ${s.id}: plan ${s.planId} "${s.planName}", ${s.status}, cycle ${when(s.cycleStart)} -> ${when(s.cycleEnd)}`);
    out.push(s.limits.length ? limitRows(s.limits) : "(no limits)");
  }
  if (v.wallets.length) out.push("", table([["WALLET", "BALANCE", "DEPOSITED"], ...v.wallets.map((w) => [w.kind, money(w.balance), money(w.totalDeposited)])]));
  if (v.credit && (v.credit.creditKeys > 0 || (v.credit.totalToppedUp?.units ?? 0n) > 0n || (v.credit.totalToppedUp?.nanos ?? 0) > 0)) out.push("", `credit: ${money(v.credit.remaining)} remaining of ${money(v.credit.totalToppedUp)} (spent ${money(v.credit.spent)}), ${v.credit.creditKeys} credit key(s)`);
  if (v.grants.length) {
    out.push("", table([["GRANT", "LIMIT", "PRODUCT", "UNITS", "SOURCE", "EXPIRES"], ...v.grants.map((g) => [g.id, g.limit, g.product || "*", count(g.amount), g.source, when(g.validUntil)])]));
  }
  return out.join("\n");
}

// ------------------------------------------------------------------ plans diff

/** Canonical JSON (sorted keys; bigint as number like the server's spec_json) for comparing plan specs. */
function canonical(v: unknown): unknown {
  if (typeof v === "bigint") return Number(v);
  if (Array.isArray(v)) return v.map(canonical);
  if (v && typeof v === "object") return Object.fromEntries(Object.keys(v).sort().map((k) => [k, canonical((v as Record<string, unknown>)[k])]));
  return v;
}

/** Paths whose values differ between two canonical specs: "limits[0].limit: 5 -> 10". */
export function specChanges(before: unknown, after: unknown, path = ""): string[] {
  if (JSON.stringify(before) === JSON.stringify(after)) return [];
  const isObj = (x: unknown) => x !== null && typeof x === "object";
  if (isObj(before) && isObj(after) && Array.isArray(before) === Array.isArray(after)) {
    const keys = Array.isArray(before)
      ? [...Array(Math.max(before.length, (after as unknown[]).length)).keys()].map(String)
      : [...new Set([...Object.keys(before as object), ...Object.keys(after as object)])].sort();
    return keys.flatMap((k) => {
      const p = Array.isArray(before) ? `${path}[${k}]` : path ? `${path}.${k}` : k;
      return specChanges((before as Record<string, unknown>)[k], (after as Record<string, unknown>)[k], p);
    });
  }
  const show = (x: unknown) => (x === undefined ? "(none)" : JSON.stringify(x));
  return [`${path || "(plan)"}: ${show(before)} -> ${show(after)}`];
}

// ------------------------------------------------------------------ the commands

const accountOpt: Options = { account: { type: "string", short: "a" } };

export const COMMANDS: Command[] = [
  {
    name: "plans diff",
    summary: "compare a plans file with the plans on the server",
    options: { file: { type: "string", short: "f" }, "exit-code": { type: "boolean" } },
    help: [
      ["-f, --file FILE", "the plans file (YAML or JSON)"],
      ["--exit-code", "exit 1 when there are differences (like git diff --exit-code)"],
    ],
    async run(ctx) {
      const file = str(ctx, "file", true);
      let text: string;
      try {
        text = readFileSync(file, "utf8");
      } catch (e) {
        throw new UsageError(`--file: cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
      }
      const local = parsePlansDocument(text, file);
      const remote = new Map((await ctx.admin().listPlans({})).plans.map((p) => [p.id, p]));
      const result = local.map((p) => {
        const server = remote.get(p.id);
        if (!server) return { id: p.id, status: "new" as const, changes: [] as string[] };
        const changes = specChanges(canonical(JSON.parse(server.specJson)), canonical(p));
        return { id: p.id, status: changes.length ? ("changed" as const) : ("unchanged" as const), version: server.version, changes };
      });
      const onlyOnServer = [...remote.keys()].filter((id) => !local.some((p) => p.id === id)).sort();
      const differs = result.some((r) => r.status !== "unchanged");
      if (ctx.json) ctx.out(JSON.stringify({ plans: result, onlyOnServer }, null, 2));
      else {
        for (const r of result) {
          if (r.status === "new") ctx.out(`+ ${r.id}: new (not on the server)`);
          else if (r.status === "unchanged") ctx.out(`= ${r.id}: unchanged (v${r.version})`);
          else {
            ctx.out(`~ ${r.id}: changed (server v${r.version} -> file)`);
            for (const c of r.changes) ctx.out(`    ${c}`);
          }
        }
        for (const id of onlyOnServer) ctx.out(`  ${id}: only on the server (apply does not delete it)`);
        ctx.out(differs ? "plans apply would change the server" : "no differences");
      }
      return differs && ctx.values["exit-code"] ? 1 : 0;
    },
  },
  {
    name: "accounts create",
    summary: "create an account (with its prepaid and credit wallets)",
    options: { id: { type: "string" }, name: { type: "string" }, "request-id": { type: "string" } },
    help: [
      ["--name NAME", "display name (required)"],
      ["--id ID", "account id ([a-z0-9_-], 1-64); generated when absent"],
      ["--request-id ID", "idempotency key: a retried create returns the same account"],
    ],
    async run(ctx) {
      const r = await ctx.admin().createAccount({ id: str(ctx, "id"), name: str(ctx, "name", true), requestId: str(ctx, "request-id") });
      if (ctx.json) return printJson(ctx, QuotaAdminService.method.createAccount.output, r);
      ctx.out(`account ${r.account!.id} "${r.account!.name}" created ${when(r.account!.createdAt)}`);
    },
  },
  {
    name: "accounts get",
    summary: "show one account",
    usage: "ACCOUNT_ID",
    async run(ctx) {
      const r = await ctx.admin().getAccount({ id: positional(ctx, "ACCOUNT_ID") });
      if (ctx.json) return printJson(ctx, QuotaAdminService.method.getAccount.output, r);
      ctx.out(table([["ID", "NAME", "CREATED"], [r.account!.id, r.account!.name, when(r.account!.createdAt)]]));
    },
  },
  {
    name: "keys create",
    summary: "create an API key (the secret is printed once)",
    options: {
      ...accountOpt,
      subscription: { type: "string", short: "s" },
      name: { type: "string" },
      owner: { type: "boolean" },
      overage: { type: "boolean" },
      "sub-limit": { type: "string", multiple: true },
      expires: { type: "string" },
      "request-id": { type: "string" },
    },
    help: [
      ["-a, --account ID", "the account (required)"],
      ["-s, --subscription ID", "the subscription the key draws from (required)"],
      ["--name NAME", "display name"],
      ["--owner", "the account owner's key (may buy add-ons)"],
      ["--overage", "may go past quota (billed later as overage)"],
      ["--sub-limit LIMIT=UNITS", "the key's own share of a quota limit (repeatable)"],
      ["--expires TIME", "expiry, ISO-8601"],
      ["--request-id ID", "idempotency key (a retry returns the key id, never the secret again)"],
    ],
    async run(ctx) {
      const subLimits = Object.fromEntries(pairs(ctx, "sub-limit").map(([k, v]) => [k, int64("sub-limit", v)]));
      const expires = str(ctx, "expires");
      const r = await ctx.admin().createApiKey({
        accountId: str(ctx, "account", true),
        subscriptionId: str(ctx, "subscription", true),
        name: str(ctx, "name"),
        owner: ctx.values.owner === true,
        overageEnabled: ctx.values.overage === true,
        subLimits,
        ...(expires ? { expiresAt: instant("expires", expires) } : {}),
        requestId: str(ctx, "request-id"),
      });
      if (ctx.json) return printJson(ctx, QuotaAdminService.method.createApiKey.output, r);
      ctx.out(`key ${r.key!.id} created for subscription ${r.key!.subscriptionId}${r.key!.owner ? " (owner)" : ""}`);
      ctx.out(r.apiKey ? `API key (shown once, store it now): ${r.apiKey}` : "(a retried create: the secret was shown the first time only)");
    },
  },
  {
    name: "keys revoke",
    summary: "revoke an API key (denied with KEY_REVOKED everywhere from now on)",
    usage: "KEY_ID",
    async run(ctx) {
      const r = await ctx.admin().revokeApiKey({ keyId: positional(ctx, "KEY_ID") });
      if (ctx.json) return printJson(ctx, QuotaAdminService.method.revokeApiKey.output, r);
      ctx.out(`key ${r.key!.id} ${r.key!.status}`);
    },
  },
  {
    name: "keys list",
    summary: "list an account's keys (never their secrets)",
    options: accountOpt,
    help: [["-a, --account ID", "the account (required)"]],
    async run(ctx) {
      const r = await ctx.admin().listApiKeys({ accountId: str(ctx, "account", true) });
      if (ctx.json) return printJson(ctx, QuotaAdminService.method.listApiKeys.output, r);
      const rows = [["KEY", "NAME", "SUBSCRIPTION", "STATUS", "OWNER", "OVERAGE", "SUB-LIMITS", "CREATED"]];
      for (const k of r.keys) {
        rows.push([k.id, k.name, k.subscriptionId, k.status, k.owner ? "yes" : "no", k.overageEnabled ? "yes" : "no", Object.entries(k.subLimits).map(([n, v]) => `${n}=${v}`).join(",") || "-", when(k.createdAt)]);
      }
      ctx.out(r.keys.length ? table(rows) : "no keys");
    },
  },
  {
    name: "subscriptions create",
    summary: "subscribe an account to a plan",
    options: {
      ...accountOpt,
      plan: { type: "string", short: "p" },
      starts: { type: "string" },
      ends: { type: "string" },
      block: { type: "string", multiple: true },
      "add-on": { type: "string", multiple: true },
      "request-id": { type: "string" },
    },
    help: [
      ["-a, --account ID", "the account (required)"],
      ["-p, --plan ID", "the plan (required)"],
      ["--starts TIME", "start and cycle anchor, ISO-8601 (default now)"],
      ["--ends TIME", "end, ISO-8601 (default open-ended unless the plan fixes a period)"],
      ["--block NAME", "a reserved daily access block for time-block plans (repeatable or comma-separated)"],
      ["--add-on LIMIT=PACKAGE", "an initial add-on (repeatable)"],
      ["--request-id ID", "idempotency key"],
    ],
    async run(ctx) {
      const starts = str(ctx, "starts");
      const ends = str(ctx, "ends");
      const r = await ctx.admin().createSubscription({
        accountId: str(ctx, "account", true),
        planId: str(ctx, "plan", true),
        ...(starts ? { startsAt: instant("starts", starts) } : {}),
        ...(ends ? { endsAt: instant("ends", ends) } : {}),
        accessBlocks: list(ctx, "block"),
        addOns: Object.fromEntries(pairs(ctx, "add-on")),
        requestId: str(ctx, "request-id"),
      });
      if (ctx.json) return printJson(ctx, QuotaAdminService.method.createSubscription.output, r);
      const s = r.subscription!;
      ctx.out(`subscription ${s.id}: account ${s.accountId}, plan ${s.planId}, ${s.status}, from ${when(s.startsAt)}${s.endsAt ? ` until ${when(s.endsAt)}` : ""}`);
    },
  },
  {
    name: "subscriptions cancel",
    summary: "end a subscription now (its keys stop working)",
    usage: "SUBSCRIPTION_ID",
    async run(ctx) {
      const r = await ctx.admin().cancelSubscription({ subscriptionId: positional(ctx, "SUBSCRIPTION_ID") });
      if (ctx.json) return printJson(ctx, QuotaAdminService.method.cancelSubscription.output, r);
      ctx.out(`subscription ${r.subscription!.id} ${r.subscription!.status}${r.subscription!.endsAt ? ` (ended ${when(r.subscription!.endsAt)})` : ""}`);
    },
  },
  {
    name: "deposit",
    summary: "credit a wallet from an external payment (a reference is credited once only)",
    options: { ...accountOpt, wallet: { type: "string", short: "w", default: "prepaid" }, amount: { type: "string" }, reference: { type: "string" }, provider: { type: "string" } },
    help: [
      ["-a, --account ID", "the account (required)"],
      ["-w, --wallet KIND", "prepaid (buys quota, the default) or credit (spent by credit keys)"],
      ["--amount USD", "the amount paid, e.g. 25 or 9.99 (required)"],
      ["--reference REF", "the payment's unique reference, e.g. a checkout session id (required)"],
      ["--provider NAME", "where it was paid, e.g. stripe (default cli)"],
    ],
    async run(ctx) {
      const r = await ctx.admin().deposit({
        accountId: str(ctx, "account", true),
        wallet: str(ctx, "wallet"),
        payment: { reference: str(ctx, "reference", true), amount: usd("amount", str(ctx, "amount", true)), provider: str(ctx, "provider") || "cli" },
      });
      if (ctx.json) return printJson(ctx, QuotaAdminService.method.deposit.output, r);
      ctx.out(r.replayed ? `reference already credited (transaction ${r.transactionId}): nothing credited again; balance ${money(r.balance)}` : `deposited: balance ${money(r.balance)} (transaction ${r.transactionId})`);
    },
  },
  {
    name: "topup",
    summary: "buy quota for the current cycle (from the wallet by default, or from an external payment)",
    options: {
      ...accountOpt,
      units: { type: "string" },
      amount: { type: "string" },
      product: { type: "string" },
      limit: { type: "string" },
      subscription: { type: "string", short: "s" },
      "max-price": { type: "string" },
      reference: { type: "string" },
      paid: { type: "string" },
      provider: { type: "string" },
      "idempotency-key": { type: "string", short: "k" },
    },
    help: [
      ["-a, --account ID", "the account (required)"],
      ["--units N", "units to add (a multiple of the plan's top-up increment); or"],
      ["--amount USD", "money to spend instead, converted at the plan's price"],
      ["--product NAME", "only for this product (default every product)"],
      ["--limit NAME", "the quota limit (default the plan's top-up limit)"],
      ["-s, --subscription ID", "which subscription (default the account's only active one)"],
      ["--max-price USD", "from the wallet: fail instead of spending more than this"],
      ["--reference REF, --paid USD", "pay with an external payment instead of the wallet (credited once only)"],
      ["--provider NAME", "with --reference: where it was paid (default cli)"],
      ["-k, --idempotency-key KEY", "repeat a top-up safely (default: a new random key, printed)"],
    ],
    async run(ctx) {
      const units = str(ctx, "units");
      const amount = str(ctx, "amount");
      if (!!units === !!amount) throw new UsageError("exactly one of --units and --amount is required");
      const reference = str(ctx, "reference");
      if (reference && !str(ctx, "paid")) throw new UsageError("--paid is required with --reference");
      const maxPrice = str(ctx, "max-price");
      const key = str(ctx, "idempotency-key") || `cli-${randomUUID()}`;
      const line = { product: str(ctx, "product"), limit: str(ctx, "limit"), ...(units ? { units: int64("units", units) } : { amount: usd("amount", amount) }) };
      const r = await ctx.quota().topUp({
        accountId: str(ctx, "account", true),
        subscriptionId: str(ctx, "subscription"),
        idempotencyKey: key,
        target: { case: "quota", value: { lines: [line] } },
        funding: reference
          ? { case: "external", value: { reference, amount: usd("paid", str(ctx, "paid")), provider: str(ctx, "provider") || "cli" } }
          : { case: "fromWallet", value: maxPrice ? { maxAmount: usd("max-price", maxPrice) } : {} },
      });
      if (ctx.json) return printJson(ctx, QuotaService.method.topUp.output, r);
      const bought = r.grants.reduce((n, g) => n + g.amount, 0n);
      ctx.out(`${r.replayed ? "already applied" : "topped up"}: +${count(bought)} units, new limit ${count(r.newLimit)}, wallet ${money(r.newBalance)}`);
      ctx.out(`transaction ${r.transactionId}, idempotency key ${key}`);
    },
  },
  {
    name: "limits",
    summary: "every limit with used/remaining/reset as a table with bars, balances and grants",
    options: { ...accountOpt, "key-id": { type: "string" }, product: { type: "string" } },
    help: [
      ["-a, --account ID", "an account (every subscription); or"],
      ["--key-id ID", "one key's public id; or QUOTA_API_KEY in the environment (the full key)"],
      ["--product NAME", "only limits that apply to this product"],
    ],
    async run(ctx) {
      const accountId = str(ctx, "account");
      const keyId = str(ctx, "key-id");
      const apiKey = accountId || keyId ? "" : (ctx.env.QUOTA_API_KEY ?? "");
      if ([accountId, keyId, apiKey].filter(Boolean).length !== 1) throw new UsageError("exactly one of --account, --key-id (or QUOTA_API_KEY) is required");
      const r = await ctx.quota().getLimits({ accountId, keyId, apiKey, product: str(ctx, "product") });
      if (ctx.json) return printJson(ctx, QuotaService.method.getLimits.output, r);
      ctx.out(renderLimits(r));
    },
  },
  {
    name: "ledger list",
    summary: "ledger transactions with their postings, newest first",
    options: { ...accountOpt, limit: { type: "string", default: "20" }, "page-token": { type: "string" } },
    help: [
      ["-a, --account ID", "one account (default every account)"],
      ["--limit N", "page size, 1-500 (default 20)"],
      ["--page-token T", "the next page (printed at the end of a page)"],
    ],
    async run(ctx) {
      const r = await ctx.admin().listLedger({ accountId: str(ctx, "account"), pageSize: Number(int64("limit", str(ctx, "limit"))), pageToken: str(ctx, "page-token") });
      if (ctx.json) return printJson(ctx, QuotaAdminService.method.listLedger.output, r);
      const rows = [["TIME", "TRANSACTION", "ACCOUNT", "TYPE", "POSTINGS", "DESCRIPTION"]];
      for (const t of r.transactions) {
        const postings = t.postings.map((p) => `${p.ledgerAccount} ${p.amountMicros >= 0n ? "+" : ""}${formatMicros(p.amountMicros)}`).join("; ");
        rows.push([when(t.createdAt), t.id, t.accountId, t.type, postings, t.description + (t.externalReference ? ` [ref ${t.externalReference}]` : "")]);
      }
      ctx.out(r.transactions.length ? table(rows) : "no transactions");
      if (r.nextPageToken) ctx.out(`more: --page-token ${r.nextPageToken}`);
    },
  },
  {
    name: "check",
    summary: "one CheckAndReserve (ENFORCE reserves: Release it, or let it expire)",
    options: {
      "key-id": { type: "string" },
      product: { type: "string" },
      method: { type: "string", short: "m" },
      cost: { type: "string" },
      meter: { type: "string", multiple: true },
      mode: { type: "string", default: "enforce" },
      "idempotency-id": { type: "string" },
      "exit-code": { type: "boolean" },
    },
    help: [
      ["--key-id ID", "the key's public id; or QUOTA_API_KEY in the environment (the full key)"],
      ["--product NAME", "the product called (required)"],
      ["-m, --method NAME", "the method called (required)"],
      ["--cost N", "explicit cost in units (default: the plan's method weight)"],
      ["--meter NAME=N", "metered usage estimate, e.g. tokens=1000 (repeatable)"],
      ["--mode MODE", "enforce (default), check-only (dry run) or shadow"],
      ["--idempotency-id ID", "the same id returns the same reservation"],
      ["--exit-code", "exit 3 when the answer is DENIED"],
    ],
    async run(ctx) {
      const keyId = str(ctx, "key-id");
      const apiKey = keyId ? "" : (ctx.env.QUOTA_API_KEY ?? "");
      if (!keyId && !apiKey) throw new UsageError("--key-id (or QUOTA_API_KEY in the environment) is required");
      const modes: Record<string, Mode> = { enforce: Mode.ENFORCE, "check-only": Mode.CHECK_ONLY, shadow: Mode.SHADOW };
      const mode = modes[str(ctx, "mode")];
      if (mode === undefined) throw new UsageError(`--mode: ${JSON.stringify(str(ctx, "mode"))} is not one of enforce, check-only, shadow`);
      const cost = str(ctx, "cost");
      const r = await ctx.quota().checkAndReserve({
        apiKey,
        keyId,
        product: str(ctx, "product", true),
        method: str(ctx, "method", true),
        ...(cost ? { cost: int64("cost", cost, { positive: false }) } : {}),
        meters: Object.fromEntries(pairs(ctx, "meter").map(([k, v]) => [k, int64("meter", v, { positive: false })])),
        mode,
        idempotencyId: str(ctx, "idempotency-id"),
      });
      const denied = r.decision === Decision.DENIED;
      if (ctx.json) printJson(ctx, QuotaService.method.checkAndReserve.output, r);
      else {
        const head = denied
          ? `DENIED ${REASON[r.reason] ?? r.reason}${r.deniedLimit ? ` by ${r.deniedLimit}` : ""}${r.retryAfter ? `, retry after ${Number(r.retryAfter.seconds) + r.retryAfter.nanos / 1e9}s` : ""}`
          : `ALLOWED, cost ${r.cost}${r.overage ? " (overage)" : ""}${r.reservationId ? `, reservation ${r.reservationId}` : ""}`;
        ctx.out(head);
        if (r.limits.length) ctx.out(limitRows(r.limits));
      }
      return denied && ctx.values["exit-code"] ? 3 : 0;
    },
  },
];

// ------------------------------------------------------------------ running one

export function commandHelp(c: Command): string {
  const lines = [`usage: quota-authority ${c.name}${c.usage ? ` ${c.usage}` : ""} [options]`, "", c.summary, "", "options:"];
  const all = [...(c.help ?? []), ...COMMON_HELP];
  const w = Math.max(...all.map(([f]) => f.length));
  for (const [f, d] of all) lines.push(`  ${f.padEnd(w)}  ${d}`);
  const token = c.name === "topup" || c.name === "limits" || c.name === "check" ? "QUOTA_SERVICE_TOKEN (data plane; not needed if the server has none)" : "QUOTA_ADMIN_TOKEN (required)";
  lines.push("", `credentials: ${token}`);
  return lines.join("\n");
}

/** Finds the command named by the first one or two positionals, or undefined. */
export function findCommand(positionals: string[]): { command: Command; rest: string[] } | undefined {
  const two = positionals.slice(0, 2).join(" ");
  const c = COMMANDS.find((x) => x.name === two) ?? COMMANDS.find((x) => x.name === positionals[0]);
  if (!c) return undefined;
  return { command: c, rest: positionals.slice(c.name.split(" ").length) };
}

/** "127.0.0.1:50051" -> "http://127.0.0.1:50051"; URLs as they are. */
export function serverUrl(addr: string): string {
  const a = addr.trim();
  if (/^https?:\/\//.test(a)) return a.replace(/\/$/, "");
  if (!/^[\w.-]+:\d+$|^\[[0-9a-f:]+\]:\d+$/i.test(a)) throw new UsageError(`--server: ${JSON.stringify(addr)} is not host:port or an http(s):// URL`);
  return `http://${a}`;
}

const CODE_NAMES = Object.fromEntries(Object.entries(Code).filter(([, v]) => typeof v === "number").map(([k, v]) => [v, k.replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase()]));

/** Runs one remote command; returns the exit code. Writes the answer to `out` and any error as one line to `err`. */
export async function runRemote(argv: string[], io: { out(s: string): void; err(s: string): void; env: NodeJS.ProcessEnv }): Promise<number> {
  const positionals = argv.filter((a) => !a.startsWith("-"));
  const found = findCommand(positionals);
  if (!found) return -1;
  const { command } = found;
  if (argv.includes("--help") || argv.includes("-h")) {
    io.out(commandHelp(command));
    return 0;
  }
  let server = "";
  try {
    const parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: { ...command.options, server: { type: "string" }, json: { type: "boolean", default: false }, help: { type: "boolean", short: "h" } },
    });
    const args = parsed.positionals.slice(command.name.split(" ").length);
    if (!command.usage && args.length) throw new UsageError(`unexpected argument ${JSON.stringify(args[0])}`);
    server = serverUrl((parsed.values.server as string | undefined) ?? io.env.QUOTA_SERVER ?? "127.0.0.1:50051");
    const transport = createGrpcTransport({ baseUrl: server });
    const bearer = (name: "QUOTA_ADMIN_TOKEN" | "QUOTA_SERVICE_TOKEN", required: boolean): Record<string, string> => {
      const t = io.env[name] ?? "";
      if (!t && required) throw new UsageError(`${name} is not set: the admin service needs the server's admin token in the environment`);
      return t ? { authorization: `Bearer ${t}` } : {};
    };
    const callOpts = (headers: Record<string, string>) => ({ headers, timeoutMs: 15_000 });
    const wrapClient = <S extends typeof QuotaAdminService | typeof QuotaService>(svc: S, headers: () => Record<string, string>): Client<S> => {
      const raw = createClient(svc, transport) as unknown as Record<string, (req: unknown, o: unknown) => Promise<unknown>>;
      return new Proxy(raw, { get: (t, p: string) => (req: unknown) => t[p]!(req, callOpts(headers())) }) as unknown as Client<S>;
    };
    const ctx: Ctx = {
      values: parsed.values as Ctx["values"],
      args,
      json: parsed.values.json === true,
      env: io.env,
      admin: () => wrapClient(QuotaAdminService, () => bearer("QUOTA_ADMIN_TOKEN", true)),
      quota: () => wrapClient(QuotaService, () => bearer("QUOTA_SERVICE_TOKEN", false)),
      out: (line = "") => io.out(line),
    };
    return (await command.run(ctx)) ?? 0;
  } catch (e) {
    if (e instanceof UsageError || (e as { code?: string }).code?.startsWith?.("ERR_PARSE_ARGS")) {
      io.err(`quota-authority ${command.name}: ${(e as Error).message} (see --help)`);
      return 2;
    }
    if (e instanceof ConnectError) {
      const name = CODE_NAMES[e.code] ?? String(e.code);
      const reason = e.metadata.get("x-error-reason");
      if (e.code === Code.Unavailable && /ECONNREFUSED|connect|ENOTFOUND|EHOSTUNREACH/i.test(e.rawMessage)) {
        io.err(`error: cannot reach the server at ${server} (UNAVAILABLE): ${e.rawMessage}`);
      } else {
        io.err(`error: ${name}${reason && reason !== name ? ` (${reason})` : ""}: ${e.rawMessage}`);
      }
      return 1;
    }
    if (e instanceof QuotaError) {
      io.err(`error: ${(e as Error).message}`);
      return 1;
    }
    throw e;
  }
}
