/**
 * What every data-plane use case is given (the ports, the clock, the caches), and the two ways they call the
 * counter store: under a deadline, and with a restore from Postgres when the store does not know the account.
 */
import { CallLimiter } from "./call-limiter.ts";
import { createHash, randomBytes } from "node:crypto";
import type { CapacitySync } from "./capacity.ts";
import type { CounterStore, Mode, ReserveCommand, ReserveResult } from "./counter-store.ts";
import { QuotaError, UnavailableError } from "./errors.ts";
import type { KeyCache } from "./key-cache.ts";
import type { AppliedLimit } from "./limits.ts";
import type { ChangeBus, Clock, Database } from "./ports.ts";

export interface QuotaServiceDeps {
  db: Database;
  store: CounterStore;
  clock: Clock;
  bus: ChangeBus;
  keys: KeyCache;
  capacity: CapacitySync;
  /** Marks an account whose usage changed, for the usage flusher; `openUntilMs` when a reservation stays open until then. */
  touched?: (accountId: string, openUntilMs?: number) => void;
  /** Counter-store deadline: past it the plan's failure mode answers. */
  storeDeadlineMs?: number;
  /** How long a request waits for a concurrent one with the same idempotency key before ABORTED (ms). */
  idempotencyWaitMs?: number;
  /** GetLimits calls per minute per key (or account) in this process; 0 = unlimited (default 120). */
  getLimitsRatePerMinute?: number;
  /** Signs lease ids (HMAC), so a lease is settled at exactly what it was granted; every replica must share it (the
   * composition root derives it from QUOTA_ADMIN_TOKEN). Default: random per process. */
  leaseSecret?: string;
  /** Counts decisions for metrics. */
  onDecision?: (event: { decision: string; reason: string; mode: Mode; failOpen: boolean }) => void;
}

/** The dependencies with their defaults filled in. */
export type QuotaDeps = QuotaServiceDeps & {
  storeDeadlineMs: number;
  leaseKey: Buffer;
  idempotencyWaitMs: number;
  /** TopUps running in this process, by idempotency scope and key: a repeat waits for the first without holding a
   * database connection. */
  topUpsInFlight: Map<string, Promise<unknown>>;
  getLimitsLimiter: CallLimiter;
};

export function withDefaults(deps: QuotaServiceDeps): QuotaDeps {
  return {
    ...deps,
    storeDeadlineMs: deps.storeDeadlineMs ?? 50,
    leaseKey: createHash("sha256").update(`quota-authority lease ids:${deps.leaseSecret ?? randomBytes(32).toString("hex")}`).digest(),
    idempotencyWaitMs: deps.idempotencyWaitMs ?? 200,
    topUpsInFlight: new Map(),
    getLimitsLimiter: new CallLimiter("GetLimits", deps.getLimitsRatePerMinute ?? 120, deps.clock),
  };
}

/** Deadline for counter-store calls: a slow store must not turn into a client timeout. (One promise settled by
 * whichever comes first, not Promise.race in an async function: this runs once per call.) */
export function withDeadline<T>(p: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new UnavailableError(`counter store did not answer within ${ms} ms`)), ms);
    p.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(timer);
        reject(e);
      },
    );
  });
}

/** One reserve script; on first touch (or after Redis lost the account) restore it from Postgres and go again. (The
 * first attempt is not awaited in an async function: most calls end there.) */
export function reserveWithRestore(d: QuotaDeps, cmd: ReserveCommand, deadlineMs: number): Promise<ReserveResult> {
  return withDeadline(d.store.reserve(cmd), deadlineMs).then((r) => (r.outcome === "NEED_RESTORE" ? restoreAndReserve(d, cmd, deadlineMs) : r));
}

async function restoreAndReserve(d: QuotaDeps, cmd: ReserveCommand, deadlineMs: number): Promise<ReserveResult> {
  await d.capacity.restore(cmd.accountId);
  const r = await withDeadline(d.store.reserve(cmd), deadlineMs);
  if (r.outcome === "NEED_RESTORE") throw new UnavailableError("counter store state could not be restored");
  return r;
}

/** The state of these limits without changing them (a CHECK_ONLY evaluation with zero amounts). */
export async function peekLimits(d: QuotaDeps, accountId: string, applied: AppliedLimit[], product: string): Promise<ReserveResult> {
  const cmd = {
    accountId,
    reservationId: "peek",
    mode: "CHECK_ONLY" as const,
    ttlMs: 1000,
    product,
    expiryPolicy: "charge" as const,
    gates: [],
    limits: applied.map((a) => a.counter),
  };
  try {
    return await reserveWithRestore(d, cmd, d.storeDeadlineMs * 4);
  } catch (e) {
    if (e instanceof QuotaError && e.code !== "UNAVAILABLE") throw e;
    throw new UnavailableError("counter store unreachable", { cause: e });
  }
}
