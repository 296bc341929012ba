/**
 * Local leases (DESIGN §7, the server's `Lease` RPC): the client takes a number of calls of a key's quota in advance
 * and admits calls in this process, with no RPC, while the lease has calls left and has not ended. The server has
 * already deducted the whole grant, so the global limit holds across any number of processes; the next `Lease` of
 * the same key settles the previous one (`close`: the used calls are charged at the lease's per-call amounts, the
 * rest goes back). A lost process's lease is charged in full at its expiry: leases under-admit, never over-admit.
 *
 * One lease per (key, product, method) at a time. Calls the server decides remotely only (rate, concurrency and
 * access-window limits, overage keys, metered quotas: FAILED_PRECONDITION `LEASE_REMOTE_ONLY`) take the ordinary
 * CheckAndReserve path, and the client remembers that for `remoteOnlyRecheckMs`.
 */
import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { Client } from "@connectrpc/connect";
import { QuotaCanceledError, QuotaInputError, QuotaRequestError, QuotaUnavailableError, toQuotaError } from "./errors.ts";
import type { QuotaService, LeaseResponse } from "./gen/quota/v1/quota_pb.ts";
import { Decision } from "./gen/quota/v1/types_pb.ts";

export interface LeaseOptions {
  /** How many calls to ask for per lease, 1..100,000 (default 100). The server may grant fewer: at most a quarter
   * of what the quota has left, so the last calls of a quota are decided one lease (one call) at a time. */
  calls?: number;
  /** How long a lease lives, 1,000..300,000 ms (default 10,000). The server may shorten it (the end of the quota's
   * period). The client stops admitting on it a safety margin (a tenth of the TTL, 50 ms..1 s) before its end. */
  ttlMs?: number;
  /** After LEASE_REMOTE_ONLY, how long calls of that key, product and method go the remote path before the client
   * asks for a lease again (default 60,000 ms; plans can change). */
  remoteOnlyRecheckMs?: number;
}

/** Where a locally admitted call came from. Present only on calls admitted by a lease (no RPC was made). */
export interface LeaseInfo {
  /** The lease the call was counted on. */
  leaseId: string;
  /** Calls the lease still has for this process after this one. */
  remainingCalls: number;
  /** When this process stops admitting on the lease (its end, less the safety margin). */
  usableUntil: Date;
}

interface Held {
  leaseId: string;
  granted: number;
  used: number;
  usableUntil: number;
  costPerCall: bigint;
  spendPerCallMicros: bigint;
  response: LeaseResponse;
  lastUsedAt: number;
  timer: NodeJS.Timeout | undefined;
}

type Outcome = { kind: "granted" } | { kind: "denied"; response: LeaseResponse } | { kind: "remote" } | { kind: "error"; error: unknown };

interface KeyState {
  ref: { apiKey: string; keyId: string; product: string; method: string };
  held: Held | undefined;
  /** Leases whose settlement has not been confirmed (a failed Lease call): sent again with the next one. Settling
   * twice is harmless (the server answers the first settlement again). */
  toClose: Array<{ leaseId: string; usedCalls: bigint }>;
  acquiring: Promise<Outcome> | undefined;
  remoteOnlyUntil: number;
}

export interface LeaseDecision {
  /** A local admission on a held lease. */
  local?: { held: Held; info: LeaseInfo };
  /** No lease was granted: the server's denial. */
  denied?: LeaseResponse;
  /** Decide this call remotely (remote-only key, or nothing could be leased in a few tries). */
  remote?: true;
  /** The Lease RPC failed with this error (already translated): unavailable → the caller's failure policy. */
  error?: unknown;
}

/** No lease held, nothing left to settle, no Lease call under way. */
function holdsNothing(s: KeyState): boolean {
  return !s.held && s.toClose.length === 0 && !s.acquiring;
}

export function checkLeaseOptions(field: string, o: LeaseOptions | true): Required<LeaseOptions> {
  const opts = o === true ? {} : o;
  if (opts === null || typeof opts !== "object") throw new QuotaInputError(field, "must be true or { calls?, ttlMs?, remoteOnlyRecheckMs? }");
  const calls = opts.calls ?? 100;
  const ttlMs = opts.ttlMs ?? 10_000;
  const remoteOnlyRecheckMs = opts.remoteOnlyRecheckMs ?? 60_000;
  if (!Number.isSafeInteger(calls) || calls < 1 || calls > 100_000) throw new QuotaInputError(`${field}.calls`, `must be an integer 1..100000, got ${String(calls)}`);
  if (!Number.isSafeInteger(ttlMs) || ttlMs < 1000 || ttlMs > 300_000) throw new QuotaInputError(`${field}.ttlMs`, `must be an integer 1000..300000, got ${String(ttlMs)}`);
  if (typeof remoteOnlyRecheckMs !== "number" || !Number.isFinite(remoteOnlyRecheckMs) || remoteOnlyRecheckMs < 0) {
    throw new QuotaInputError(`${field}.remoteOnlyRecheckMs`, `must be a non-negative number of ms, got ${String(remoteOnlyRecheckMs)}`);
  }
  return { calls, ttlMs, remoteOnlyRecheckMs };
}

/** Most (key, product, method) states kept only to remember that the server decides them remotely. */
export const MAX_REMOTE_ONLY = 10_000;

export class LeaseManager {
  readonly #rpc: Client<typeof QuotaService>;
  readonly #o: Required<LeaseOptions>;
  readonly #margin: number;
  /** The state of each (key, product, method) in use: by API key (or key id), then product, then method. Looked up
   * by the caller's own strings, whose hashes V8 keeps: no key string is built per decision. */
  readonly #byApiKey = new Map<string, Map<string, Map<string, KeyState>>>();
  readonly #byKeyId = new Map<string, Map<string, Map<string, KeyState>>>();
  /** States remembered only as remote-only (the server answered LEASE_REMOTE_ONLY), oldest first: at most
   * MAX_REMOTE_ONLY of them, so a service calling very many keys of rate-limited plans keeps a bounded set. */
  readonly #remoteOnly = new Set<KeyState>();
  /** Lease RPCs sent so far (for tests and metrics). */
  rpcs = 0;

  constructor(rpc: Client<typeof QuotaService>, options: Required<LeaseOptions>) {
    this.#rpc = rpc;
    this.#o = options;
    this.#margin = Math.max(50, Math.min(1000, Math.floor(options.ttlMs / 10)));
  }

  /** Decides one call on a lease, or says how else to decide it. */
  async decide(ref: KeyState["ref"], call: { timeoutMs: number; signal?: AbortSignal }): Promise<LeaseDecision> {
    // A few rounds: a fresh grant can be used up by this process's other callers before this one gets a turn.
    for (let round = 0; round < 4; round++) {
      // Looked up every round: the state this caller waited on may have been settled and forgotten meanwhile (an
      // idle lease ending), and a lease is taken on the state in use (the one close() settles), never on a forgotten one.
      const s = this.#state(ref);
      if (Date.now() < s.remoteOnlyUntil) return { remote: true };
      const h = s.held;
      const now = Date.now();
      if (h && h.used < h.granted && now < h.usableUntil) {
        h.used++;
        h.lastUsedAt = now;
        return { local: { held: h, info: { leaseId: h.leaseId, remainingCalls: h.granted - h.used, usableUntil: new Date(h.usableUntil) } } };
      }
      // Forgotten when it ends holding nothing (denied, say), whether or not a caller still waits for it.
      s.acquiring ??= this.#acquire(s, call.timeoutMs, this.#o.calls).finally(() => {
        s.acquiring = undefined;
        this.#forgetIfEmpty(s);
      });
      let outcome: Outcome;
      try {
        // The Lease call is shared by this key's waiting callers; each still waits only within its own deadline.
        outcome = await wait(s.acquiring, call.signal, call.timeoutMs);
      } catch (e) {
        if (e instanceof QuotaUnavailableError) return { error: e };
        throw e;
      }
      if (outcome.kind === "denied") return { denied: outcome.response };
      if (outcome.kind === "error") return { error: outcome.error };
    }
    return { remote: true };
  }

  /** Forgets a state that holds nothing (no lease, nothing to settle, no Lease call, not remote-only): a denied key
   * is asked again by its next call anyway, so many keys denied once cost nothing kept. */
  #forgetIfEmpty(s: KeyState): void {
    if (holdsNothing(s) && Date.now() >= s.remoteOnlyUntil) this.#forget(s);
  }

  /** The state of a (key, product, method), made on first use. */
  #state(ref: KeyState["ref"]): KeyState {
    const top = ref.apiKey ? this.#byApiKey : this.#byKeyId;
    const key = ref.apiKey || ref.keyId;
    let byProduct = top.get(key);
    if (!byProduct) top.set(key, (byProduct = new Map()));
    let byMethod = byProduct.get(ref.product);
    if (!byMethod) byProduct.set(ref.product, (byMethod = new Map()));
    let s = byMethod.get(ref.method);
    if (!s) byMethod.set(ref.method, (s = { ref, held: undefined, toClose: [], acquiring: undefined, remoteOnlyUntil: 0 }));
    return s;
  }

  /** Forgets a state (and the maps it leaves empty), if it is still the one in use for its (key, product, method). */
  #forget(s: KeyState): void {
    const top = s.ref.apiKey ? this.#byApiKey : this.#byKeyId;
    const key = s.ref.apiKey || s.ref.keyId;
    const byProduct = top.get(key);
    const byMethod = byProduct?.get(s.ref.product);
    this.#remoteOnly.delete(s);
    if (byMethod?.get(s.ref.method) !== s) return;
    byMethod.delete(s.ref.method);
    if (byMethod.size === 0) byProduct!.delete(s.ref.product);
    if (byProduct!.size === 0) top.delete(key);
  }

  /** Every state in use. */
  *#all(): Generator<KeyState> {
    for (const top of [this.#byApiKey, this.#byKeyId]) for (const byProduct of top.values()) for (const byMethod of byProduct.values()) yield* byMethod.values();
  }

  /** Every state in use, and forgets them all. */
  #takeAll(): KeyState[] {
    const out = [...this.#all()];
    this.#byApiKey.clear();
    this.#byKeyId.clear();
    this.#remoteOnly.clear();
    return out;
  }

  /** States held, for tests: (key, product, method) combinations in use. */
  get size(): number {
    let n = 0;
    for (const _ of this.#all()) n++;
    return n;
  }

  /** Settles the held lease (with what was used) and takes a new one of `calls` (0: settle only). */
  async #acquire(s: KeyState, timeoutMs: number, calls: number): Promise<Outcome> {
    const h = s.held;
    if (h) {
      // From here on nothing more is admitted on it: what is sent as used is final.
      s.held = undefined;
      clearTimeout(h.timer);
      s.toClose.push({ leaseId: h.leaseId, usedCalls: BigInt(h.used) });
    }
    const close = s.toClose.slice(-100);
    if (calls === 0 && close.length === 0) return { kind: "granted" };
    const sentAt = Date.now();
    let r: LeaseResponse;
    try {
      this.rpcs++;
      r = await this.#rpc.lease(
        { apiKey: s.ref.apiKey, keyId: s.ref.keyId, product: s.ref.product, method: s.ref.method, calls: BigInt(calls), ttl: { seconds: BigInt(Math.floor(this.#o.ttlMs / 1000)), nanos: (this.#o.ttlMs % 1000) * 1_000_000 }, close },
        { timeoutMs },
      );
    } catch (e) {
      const err = toQuotaError(e, undefined);
      if (err instanceof QuotaRequestError && err.code === "failedPrecondition" && err.reason === "LEASE_REMOTE_ONLY") {
        // The server settled `close` before it answered this.
        s.toClose = [];
        s.remoteOnlyUntil = Date.now() + this.#o.remoteOnlyRecheckMs;
        this.#remoteOnly.delete(s);
        this.#remoteOnly.add(s);
        if (this.#remoteOnly.size > MAX_REMOTE_ONLY) {
          const oldest = this.#remoteOnly.values().next().value!;
          this.#remoteOnly.delete(oldest);
          // Forgotten unless it holds something after all; its key asks the server again on its next call.
          if (holdsNothing(oldest)) this.#forget(oldest);
        }
        return { kind: "remote" };
      }
      // Settlement unconfirmed: `toClose` is sent again with the next Lease (an unsettled lease is charged in full
      // at its expiry: under-admission, never over-admission).
      return { kind: "error", error: err };
    }
    s.toClose = [];
    if (calls === 0) return { kind: "granted" };
    if (r.decision !== Decision.ALLOWED || r.grantedCalls <= 0n) return { kind: "denied", response: r };
    // Never past the server's end, nor past our own clock's view of it (the send time plus the TTL asked for).
    const end = Math.min(r.expiresAt ? timestampMs(r.expiresAt) : sentAt + this.#o.ttlMs, sentAt + this.#o.ttlMs);
    const held: Held = {
      leaseId: r.leaseId,
      granted: Number(r.grantedCalls),
      used: 0,
      usableUntil: end - this.#margin,
      costPerCall: r.costPerCall,
      spendPerCallMicros: r.spendPerCallMicros,
      response: r,
      lastUsedAt: 0,
      timer: undefined,
    };
    s.held = held;
    this.#remoteOnly.delete(s);
    held.timer = setTimeout(() => this.#onEnd(s, held), Math.max(0, held.usableUntil - Date.now()));
    held.timer.unref();
    return { kind: "granted" };
  }

  /** At the end of a lease's usable life: renew it when it was in use in its second half, else only settle it. */
  #onEnd(s: KeyState, h: Held): void {
    if (s.held !== h || s.acquiring) return;
    const busy = h.lastUsedAt >= h.usableUntil - this.#o.ttlMs / 2;
    s.acquiring = this.#acquire(s, 10_000, busy ? this.#o.calls : 0).finally(() => {
      s.acquiring = undefined;
      // A key that holds nothing any more (an idle one settled, a renewal refused) is forgotten (a later call starts
      // afresh), so what is kept stays bounded by the keys in use.
      this.#forgetIfEmpty(s);
    });
  }

  /** Settles every held lease (one Lease call with `calls: 0` per key); failures leave them to expire, charged. */
  async close(timeoutMs: number): Promise<void> {
    const states = this.#takeAll();
    await Promise.allSettled(
      states.map(async (s) => {
        if (s.acquiring) await s.acquiring;
        await this.#acquire(s, timeoutMs, 0);
      }),
    );
  }
}

/** Waits for a shared promise within this caller's deadline; rejects as its own cancellation when its signal aborts. */
function wait<T>(p: Promise<T>, signal: AbortSignal | undefined, timeoutMs: number): Promise<T> {
  if (signal?.aborted) return Promise.reject(new QuotaCanceledError());
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(new QuotaCanceledError());
    const timer = setTimeout(() => reject(new QuotaUnavailableError("deadline", "deadlineExceeded", "quota service: no lease within the deadline")), timeoutMs);
    signal?.addEventListener("abort", onAbort, { once: true });
    p.then(resolve, reject).finally(() => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
    });
  });
}
