/** Records as callers see them: grants and keys (no secret hash, status judged at `now`). */
import type { GrantRecord, KeyRecord } from "./ports.ts";

export interface GrantOut {
  id: string;
  subscriptionId: string;
  limit: string;
  product: string;
  amount: bigint;
  priority: number;
  validFrom: number;
  validUntil?: number;
  source: string;
}

export interface KeyViewOut {
  id: string;
  name: string;
  subscriptionId: string;
  status: string;
  overageEnabled: boolean;
  owner: boolean;
  subLimits: Record<string, bigint>;
  createdAt: number;
}

export function grantOut(g: GrantRecord): GrantOut {
  const out: GrantOut = {
    id: g.id,
    subscriptionId: g.subscriptionId,
    limit: g.limitName,
    product: g.product,
    amount: g.amount,
    priority: g.priority,
    validFrom: g.validFrom.getTime(),
    source: g.source,
  };
  if (g.validUntil) out.validUntil = g.validUntil.getTime();
  return out;
}

export function keyView(k: KeyRecord, now: number): KeyViewOut {
  return {
    id: k.id,
    name: k.name,
    subscriptionId: k.subscriptionId,
    status: k.status === "revoked" ? "revoked" : k.expiresAt && k.expiresAt.getTime() <= now ? "expired" : "active",
    overageEnabled: k.overage,
    owner: k.owner,
    subLimits: k.subLimits,
    createdAt: k.createdAt.getTime(),
  };
}
