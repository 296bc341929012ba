/**
 * MikroORM entities (defineEntity: no decorators, so Node's type stripping runs them as they are).
 * Relations are plain indexed id columns without foreign-key constraints: rows are only written by the core's
 * transactions, which check the referenced rows exist; the core works with plain records (src/core/ports.ts), so no
 * lazy relation loading happens anywhere.
 */
import { defineEntity, p } from "@mikro-orm/core";
import type { PlanSpec } from "../../core/plan.ts";

export const AccountEntity = defineEntity({
  name: "Account",
  tableName: "accounts",
  properties: {
    id: p.string().length(64).primary(),
    name: p.string().length(200),
    createdAt: p.datetime().defaultRaw("now()"),
    /** Bumped in every transaction that changes capacity; Redis is in sync when capacitySynced equals it. */
    capacityVersion: p.integer().default(0),
    capacitySynced: p.integer().default(0),
  },
});

export const PlanEntity = defineEntity({
  name: "Plan",
  tableName: "plans",
  properties: {
    id: p.string().length(64).primary(),
    name: p.string().length(200),
    version: p.integer().default(1),
    spec: p.json<PlanSpec>(),
    updatedAt: p.datetime().defaultRaw("now()"),
  },
});

export const SubscriptionEntity = defineEntity({
  name: "Subscription",
  tableName: "subscriptions",
  properties: {
    id: p.string().length(64).primary(),
    accountId: p.string().length(64).index(),
    planId: p.string().length(64),
    startsAt: p.datetime(),
    endsAt: p.datetime().nullable(),
    accessBlocks: p.json<string[]>(),
    addOns: p.json<Record<string, string>>(),
    status: p.enum(["active", "cancelled"] as const),
    createdAt: p.datetime().defaultRaw("now()"),
  },
});

export const ApiKeyEntity = defineEntity({
  name: "ApiKey",
  tableName: "api_keys",
  properties: {
    id: p.string().length(32).primary(),
    accountId: p.string().length(64).index(),
    subscriptionId: p.string().length(64),
    name: p.string().length(200),
    /** SHA-256 (hex) of the secret; the secret itself is never stored. */
    secretHash: p.string().length(64),
    status: p.enum(["active", "revoked"] as const),
    owner: p.boolean().default(false),
    overage: p.boolean().default(false),
    subLimits: p.json<Record<string, string>>(),
    expiresAt: p.datetime().nullable(),
    createdAt: p.datetime().defaultRaw("now()"),
    revokedAt: p.datetime().nullable(),
  },
});

export const WalletEntity = defineEntity({
  name: "Wallet",
  tableName: "wallets",
  properties: {
    accountId: p.string().length(64).primary(),
    kind: p.enum(["prepaid", "credit"] as const).primary(),
    /** Cached balance in micro-USD, maintained in the same transaction as the postings; never negative. */
    balance: p.bigint().check("balance >= 0"),
    totalDeposited: p.bigint().default(0),
    /** Credit wallets: spend already posted to the ledger by the usage flusher (live spend is in the counters). */
    spentPosted: p.bigint().default(0),
    updatedAt: p.datetime().defaultRaw("now()"),
  },
  primaryKeys: ["accountId", "kind"],
});

export const GrantEntity = defineEntity({
  name: "Grant",
  tableName: "quota_grants",
  properties: {
    id: p.string().length(64).primary(),
    accountId: p.string().length(64).index(),
    subscriptionId: p.string().length(64),
    limitName: p.string().length(64),
    product: p.string().length(64).default(""),
    amount: p.bigint(),
    priority: p.integer().default(0),
    validFrom: p.datetime(),
    validUntil: p.datetime().nullable(),
    source: p.enum(["topup", "adjustment"] as const),
    transactionId: p.string().length(64),
    createdAt: p.datetime().defaultRaw("now()"),
  },
});

export const LedgerTransactionEntity = defineEntity({
  name: "LedgerTransaction",
  tableName: "ledger_transactions",
  properties: {
    id: p.string().length(64).primary(),
    accountId: p.string().length(64),
    type: p.enum(["deposit", "quota_purchase", "addon_change", "adjustment", "usage"] as const),
    createdAt: p.datetime().defaultRaw("now()"),
    /** An external payment reference is credited once only: unique. */
    externalReference: p.string().length(256).nullable().unique(),
    description: p.text().default(""),
  },
  indexes: [{ properties: ["accountId", "createdAt"] }],
});

export const LedgerPostingEntity = defineEntity({
  name: "LedgerPosting",
  tableName: "ledger_postings",
  properties: {
    id: p.string().length(64).primary(),
    transactionId: p.string().length(64).index(),
    ledgerAccount: p.string().length(200).index(),
    currency: p.string().length(3),
    amount: p.bigint(),
  },
});

export const IdempotencyEntity = defineEntity({
  name: "Idempotency",
  tableName: "idempotency_records",
  properties: {
    scope: p.string().length(128).primary(),
    key: p.string().length(128).primary(),
    requestHash: p.string().length(64),
    response: p.json<unknown>(),
    createdAt: p.datetime().defaultRaw("now()"),
  },
  primaryKeys: ["scope", "key"],
});

export const UsageSnapshotEntity = defineEntity({
  name: "UsageSnapshot",
  tableName: "usage_snapshots",
  properties: {
    accountId: p.string().length(64).primary(),
    limitId: p.string().length(200).primary(),
    state: p.json<Record<string, string>>(),
    updatedAt: p.datetime().defaultRaw("now()"),
  },
  primaryKeys: ["accountId", "limitId"],
});

export const entities = [
  AccountEntity,
  PlanEntity,
  SubscriptionEntity,
  ApiKeyEntity,
  WalletEntity,
  GrantEntity,
  LedgerTransactionEntity,
  LedgerPostingEntity,
  IdempotencyEntity,
  UsageSnapshotEntity,
];
