/**
 * Leases (DESIGN §7): a caller takes a number of calls of a key's quota and budget limits in advance, in one atomic
 * reserve, and decides them locally until the lease is used up or ends. The units are deducted in the counter store
 * when the lease is granted, so the limit can never be exceeded whatever the number of callers; what a lease did not
 * use is returned when it is settled (`close`).
 *
 * - The grant shrinks as the remaining capacity shrinks: at most a quarter of what remains (LEASE_SHARE), at least one
 *   call, at most what was asked. Every grant is reserved before it is used, so leases never hold more than remains.
 * - A lease ends at its TTL and never outlives the current period of a fixed-period limit it draws on (units counted
 *   in one period are never spent in the next).
 * - An unsettled lease is charged in full when it expires (its usage is unknown: the caller may have admitted every
 *   call). Leases under-admit, they never over-admit: at most one lease's unused calls per lost caller, until expiry.
 * - Time gates (key expiry, subscription start and end) are checked when the lease is taken, and the lease ends
 *   no later than the first of them to close.
 * - Remote only: rate limits (a sliding log admits by time, not by count), concurrency (a slot is held per call in
 *   flight), access windows (blocks open and close by the hour), overage keys (they may pass a quota), and
 *   quotas that count a meter other than calls/units/spend (the meter is known only per call).
 */
import { createHmac, timingSafeEqual } from "node:crypto";
import { FailedPreconditionError, InvalidArgumentError, QuotaError, UnavailableError } from "./errors.ts";
import { newReservationId, parseReservationId } from "./ids.ts";
import { resolveKey } from "./key-auth.ts";
import { toStatus, type LimitStatusOut } from "./limit-status.ts";
import { gatesFor, limitsForCall, priceOf, type AppliedLimit } from "./limits.ts";
import { reserveWithRestore, type QuotaDeps } from "./quota-deps.ts";
import { release, type ReleaseAnswer } from "./release.ts";
import { METHOD_RE, NAME_RE, own } from "./validation.ts";
import type { DenyReason } from "./check-and-reserve.ts";

export const LEASE_SHARE = 4n;
export const MAX_LEASE_CALLS = 100_000n;

export interface LeaseRequest {
  apiKey: string;
  keyId: string;
  product: string;
  method: string;
  calls: bigint;
  ttlMs?: number;
  close: Array<{ leaseId: string; usedCalls: bigint }>;
}

export interface LeaseAnswer {
  decision: "ALLOWED" | "DENIED";
  reason?: DenyReason;
  leaseId: string;
  grantedCalls: bigint;
  costPerCall: bigint;
  spendPerCallMicros: bigint;
  expiresAt?: number;
  retryAfterMs?: number;
  limits: LimitStatusOut[];
  closed: ReleaseAnswer[];
}

const METERS_PER_CALL = new Set(["calls", "requests"]);

export async function lease(d: QuotaDeps, req: LeaseRequest): Promise<LeaseAnswer> {
  if (!req.product) throw new InvalidArgumentError("product", "is required");
  if (!NAME_RE.test(req.product)) throw new InvalidArgumentError("product", "must be 1-63 characters of a-z 0-9 _ . -");
  if (!req.method) throw new InvalidArgumentError("method", "is required");
  if (!METHOD_RE.test(req.method)) throw new InvalidArgumentError("method", "must be 1-128 characters of A-Z a-z 0-9 _ . : / -");
  if (req.calls < 0n || req.calls > MAX_LEASE_CALLS) throw new InvalidArgumentError("calls", `must be between 0 and ${MAX_LEASE_CALLS}`);
  if (req.calls === 0n && req.close.length === 0) throw new InvalidArgumentError("calls", "must be at least 1 (or give leases to close)");
  const ttl = req.ttlMs ?? 10_000;
  if (ttl < 1000 || ttl > 300_000) throw new InvalidArgumentError("ttl", "must be between 1s and 5m");
  if (req.close.length > 100) throw new InvalidArgumentError("close", "at most 100 leases per call");

  const { ctx, denial } = await resolveKey(d.keys, req.apiKey, req.keyId);
  const answer: LeaseAnswer = { decision: "DENIED", leaseId: "", grantedCalls: 0n, costPerCall: 0n, spendPerCallMicros: 0n, limits: [], closed: [] };
  if (denial || !ctx) return { ...answer, reason: denial ?? "KEY_INVALID" };
  const plan = ctx.plan.spec;

  // Settle earlier leases first: what they return is available to this grant.
  const closing = req.close.map((c, i) => {
    const parsed = parseLeaseId(d.leaseKey, c.leaseId);
    if (!parsed || parseReservationId(parsed.reservationId)?.keyId !== ctx.key.id) throw new InvalidArgumentError(`close[${i}].lease_id`, "is not a lease of this key");
    // Never more than was granted: a lease settles within what it reserved (no charge beyond it, no overage).
    if (c.usedCalls < 0n || c.usedCalls > parsed.granted) throw new InvalidArgumentError(`close[${i}].used_calls`, `must be between 0 and the ${parsed.granted} calls granted`);
    return { ...parsed, usedCalls: c.usedCalls };
  });
  const units = BigInt(own(plan.methods.costs, req.method) ?? plan.methods.default);
  const spend = priceOf(plan, {}, 1n);
  // Each lease is charged at the per-call amounts it was granted with (they are part of its id).
  for (const c of closing) {
    answer.closed.push(
      await release(d, {
        reservationId: c.reservationId,
        outcome: "COMMIT",
        actualCost: c.usedCalls * c.units,
        actualSpendMicros: c.usedCalls * c.spend,
        actualMeters: { calls: c.usedCalls, requests: c.usedCalls },
      }),
    );
  }
  answer.costPerCall = units;
  answer.spendPerCallMicros = spend;
  if (req.calls === 0n) return { ...answer, decision: "ALLOWED" };

  if (plan.products && plan.products.length > 0 && !plan.products.includes(req.product)) return { ...answer, reason: "PRODUCT_NOT_ALLOWED" };
  const now = d.clock.now();
  const applied = limitsForCall(plan, ctx.subscription, ctx.key, req.product, { units, spend, meters: {} }, now);
  const remoteOnly = (why: string): never => {
    throw new FailedPreconditionError("LEASE_REMOTE_ONLY", `${why}: decided remotely only — call CheckAndReserve for it`);
  };
  if (ctx.key.overage) remoteOnly("the key may exceed its quota (overage)");
  // Time gates (key expiry, subscription start and end) are checked when the lease is taken; it ends before they close.
  const gates = gatesFor(ctx.subscription, ctx.key);
  for (const a of applied) {
    if (a.info.kind === "RATE" || a.info.kind === "CONCURRENCY" || a.info.kind === "ACCESS_WINDOW") remoteOnly(`limit ${a.info.name} (${a.info.kind.toLowerCase()})`);
    if (a.counter.meter !== "units" && a.counter.meter !== "spend" && !METERS_PER_CALL.has(a.counter.meter)) remoteOnly(`limit ${a.info.name} counts the meter ${a.counter.meter}`);
  }
  if (applied.length === 0) remoteOnly("the call has no quota or budget limit to lease");

  const accountId = ctx.key.accountId;
  const command = (calls: bigint, mode: "CHECK_ONLY" | "ENFORCE", ttlMs: number) => ({
    accountId,
    reservationId: mode === "ENFORCE" ? newReservationId(accountId, ctx.key.id) : "lease-peek",
    mode,
    ttlMs,
    product: req.product,
    // A lease whose holder is lost is charged: its usage is unknown, and giving it back could over-admit.
    expiryPolicy: "charge" as const,
    gates,
    limits: applied.map((a) => ({ ...a.counter, amount: a.counter.amount * calls })),
  });
  const reserve = async (cmd: ReturnType<typeof command>) => {
    try {
      return await reserveWithRestore(d, cmd, d.storeDeadlineMs * 4);
    } catch (e) {
      if (e instanceof QuotaError && e.code !== "UNAVAILABLE") throw e;
      // No lease without the store: the caller falls back to its own failure policy for remote calls.
      throw new UnavailableError("counter store unreachable: no lease granted", { cause: e });
    }
  };

  // Two tries: a grant computed from a peek can lose a race with another caller; the second peek sees the new state.
  for (let attempt = 0; attempt < 2; attempt++) {
    const peek = await reserve(command(1n, "CHECK_ONLY", 1000));
    const peekStatus = applied.map((a, i) => toStatus(a, peek.states[i]));
    if (peek.outcome !== "ALLOWED") {
      return { ...answer, reason: (peek.reason ?? "QUOTA_EXHAUSTED") as DenyReason, limits: peekStatus, ...(peek.retryAfterMs !== undefined ? { retryAfterMs: peek.retryAfterMs } : {}) };
    }
    const grant = grantFor(req.calls, applied, peekStatus);
    // Never past the end of the current period of a limit the lease draws on.
    let expiresAt = peek.now + ttl;
    for (const st of peekStatus) if (st.resetAt !== undefined && st.resetAt < expiresAt) expiresAt = st.resetAt;
    for (const g of gates) if (g.until !== undefined && g.until < expiresAt) expiresAt = g.until;
    const ttlMs = Math.max(1, expiresAt - peek.now);
    const cmd = command(grant, "ENFORCE", ttlMs);
    const r = await reserve(cmd);
    if (r.outcome === "ALLOWED") {
      d.touched?.(accountId, d.clock.now() + ttlMs);
      return {
        ...answer,
        decision: "ALLOWED",
        leaseId: leaseIdOf(d.leaseKey, r.reservationId ?? cmd.reservationId, units, spend, grant),
        grantedCalls: grant,
        expiresAt,
        limits: applied.map((a, i) => toStatus(a, r.states[i])),
      };
    }
  }
  return { ...answer, reason: "QUOTA_EXHAUSTED" };
}

/** At most a quarter of what every limit has left (in calls), at least one call, at most what was asked. */
function grantFor(asked: bigint, applied: AppliedLimit[], status: LimitStatusOut[]): bigint {
  let left: bigint | undefined;
  for (const [i, a] of applied.entries()) {
    const perCall = a.counter.amount;
    if (perCall <= 0n) continue;
    const calls = status[i]!.remaining / perCall;
    if (left === undefined || calls < left) left = calls;
  }
  if (left === undefined) return asked;
  const share = left / LEASE_SHARE;
  const grant = share > 0n ? share : left > 0n ? 1n : 0n;
  return grant < asked ? grant : asked;
}

/**
 * A lease id is its reservation id with what it was granted, signed:
 * `lease~<units per call>~<spend per call>~<calls>~<reservation>~<HMAC-SHA256, 22 chars>`. The signature binds the
 * per-call amounts and the grant to the reservation, so a lease cannot be settled cheaper or beyond what the reserve
 * script charged (an edited id is "not a lease of this key"). Replicas verify each other's ids with the shared key.
 */
function leaseIdOf(key: Buffer, reservationId: string, units: bigint, spend: bigint, granted: bigint): string {
  const body = `lease~${units}~${spend}~${granted}~${reservationId}`;
  return `${body}~${sign(key, body)}`;
}

function parseLeaseId(key: Buffer, id: string): { reservationId: string; units: bigint; spend: bigint; granted: bigint } | undefined {
  const m = /^(lease~(\d{1,16})~(\d{1,16})~(\d{1,6})~(r~[A-Za-z0-9_~-]{1,200}))~([A-Za-z0-9_-]{22})$/.exec(id);
  if (!m) return undefined;
  const expected = Buffer.from(sign(key, m[1]!));
  const given = Buffer.from(m[6]!);
  if (expected.length !== given.length || !timingSafeEqual(expected, given)) return undefined;
  return { units: BigInt(m[2]!), spend: BigInt(m[3]!), granted: BigInt(m[4]!), reservationId: m[5]! };
}

function sign(key: Buffer, body: string): string {
  return createHmac("sha256", key).update(body).digest("base64url").slice(0, 22);
}
