/**
 * The Envoy rate-limit service use case (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`), written over
 * the same CheckAndReserve as every other caller. Transport-neutral: the gRPC adapter (src/transport/grpc/envoy-rls.ts)
 * translates messages, nothing more. The mapping is documented in docs/envoy.md.
 *
 * Contract:
 * - One RLS call = ONE atomic CheckAndReserve for the key the descriptors carry, across every limit of its plan. A
 *   descriptor never counts on its own, so no descriptor keeps counting while another is over its limit.
 * - `statuses` has one entry per request descriptor, in request order; a descriptor that maps to nothing is OK.
 * - What a client controls (the API key, the path) never turns into a gRPC error: Envoy's default
 *   `failure_mode_deny: false` would turn an error into "allow". Such input is answered with a decision (OVER_LIMIT
 *   KEY_INVALID, or the default method). Only what Envoy's own configuration produces (the domain, empty descriptor
 *   lists or entries, hits_addend) can be INVALID_ARGUMENT.
 * - Storage down or slow: OVER_LIMIT with reason UNAVAILABLE (fail-closed) or OK flagged fail_open, within
 *   `deadlineMs` — never a gRPC error.
 * - RLS has no Release: an admitted reservation is committed at once (no concurrency slot or reserved amount lingers).
 */
import { z } from "zod";
import type { Mode } from "./counter-store.ts";
import { InvalidArgumentError, QuotaError } from "./errors.ts";
import { parseApiKey } from "./ids.ts";
import { MAX_AMOUNT } from "./money.ts";
import type { Clock } from "./ports.ts";
import type { CheckAnswer, CheckRequest, LimitStatusOut, ReleaseAnswer, ReleaseRequest } from "./quota-service.ts";
import { KEY_ID_RE, METHOD_RE, NAME_RE } from "./validation.ts";

const entryKey = z.string().min(1).max(128);

const domainSchema = z.strictObject({
  /** The product every call of this domain is checked for. */
  product: z.string().regex(NAME_RE, "must be 1-63 characters of a-z 0-9 _ . - starting with a letter or digit"),
  /** Descriptor entry key carrying the end customer's API key (e.g. from a request_headers action on x-api-key). */
  apiKeyEntry: entryKey.default("api_key"),
  /** Descriptor entry key carrying a key id, for gateways that authenticated the key themselves. Empty: not used. */
  keyIdEntry: z.string().max(128).default(""),
  /** Descriptor entry key carrying the method (a path or a header); it selects the plan's cost weight. */
  methodEntry: entryKey.default("method"),
  /** Method used when no descriptor carries one, or when its value is not a valid method name. */
  defaultMethod: z.string().regex(METHOD_RE, "must be 1-128 characters of A-Z a-z 0-9 _ . : / -").default("default"),
  /** Descriptor entry key naming the plan limit a descriptor reports (its status in `statuses`). */
  limitEntry: entryKey.default("limit"),
  /** Decide and record, but always answer OK (CheckAndReserve mode SHADOW). */
  shadow: z.boolean().default(false),
  /** No descriptor carries a key: "deny" (OVER_LIMIT, KEY_INVALID) or "ok" (not checked, all statuses OK). */
  missingKey: z.enum(["deny", "ok"]).default("deny"),
  /** When the plan is not known in time (the key could not be resolved within the deadline): closed or open. The
   * plan's own failureMode decides whenever the counter store is the part that is down. */
  failureMode: z.enum(["closed", "open"]).default("closed"),
}).superRefine((d, ctx) => {
  // One entry key, one meaning: a key that named both the API key and the limit would be read two ways.
  const roles = [["apiKeyEntry", d.apiKeyEntry], ["keyIdEntry", d.keyIdEntry], ["methodEntry", d.methodEntry], ["limitEntry", d.limitEntry]] as const;
  const seen = new Map<string, string>();
  for (const [role, key] of roles) {
    if (!key) continue;
    const other = seen.get(key);
    if (other) ctx.addIssue({ code: "custom", path: [role], message: `is the same entry key as ${other} (${JSON.stringify(key)})` });
    else seen.set(key, role);
  }
});

export const envoyConfigSchema = z.strictObject({
  /** The whole RLS answer's deadline; keep it below Envoy's `timeout` (default 20 ms). The counter store gets 5 ms
   * less, so the plan's failure mode answers first when Redis is the slow part. */
  deadlineMs: z.number().int().min(6).max(10_000).default(15),
  /** A domain with no mapping: "error" (INVALID_ARGUMENT naming the domain) or "ok" (not checked, OK). */
  unknownDomain: z.enum(["error", "ok"]).default("error"),
  /** Envoy domain -> mapping. */
  domains: z.record(z.string().min(1).max(255), domainSchema).default({}),
});

export type EnvoyConfig = z.infer<typeof envoyConfigSchema>;
export type EnvoyDomain = z.infer<typeof domainSchema>;

export interface RlsEntry {
  key: string;
  value: string;
}

export interface RlsDescriptor {
  entries: RlsEntry[];
  /** The descriptor's own hits_addend, when set (it may be 0). */
  hitsAddend?: bigint;
}

export interface RlsRequest {
  domain: string;
  descriptors: RlsDescriptor[];
  /** The request's hits_addend; 0 means 1. */
  hitsAddend: number;
}

/** Envoy's RateLimit.Unit names (YEAR is never produced: no plan window is a year). */
export type RlsUnit = "UNKNOWN" | "SECOND" | "MINUTE" | "HOUR" | "DAY" | "WEEK" | "MONTH";

export interface RlsStatus {
  code: "OK" | "OVER_LIMIT";
  limit?: { name: string; requestsPerUnit: number; unit: RlsUnit };
  remaining: number;
  resetSeconds?: number;
}

export interface RlsAnswer {
  code: "OK" | "OVER_LIMIT";
  statuses: RlsStatus[];
  /** Response headers to add, in order. */
  headers: Array<[string, string]>;
  /** JSON body for the downstream client on OVER_LIMIT. */
  body?: string;
  /** For Envoy's dynamic metadata (access logs). */
  metadata: Record<string, string | number | boolean>;
}

/** The part of the quota service this use case needs (CheckAndReserve, and Release to commit at once). */
export interface QuotaPort {
  checkAndReserve(req: CheckRequest): Promise<CheckAnswer>;
  release(req: ReleaseRequest): Promise<ReleaseAnswer>;
}

export interface EnvoyRateLimitDeps {
  /** A quota service whose counter-store deadline is `storeDeadlineMs(config)`. */
  quota: QuotaPort;
  config: EnvoyConfig;
  clock: Clock;
  /** An immediate commit failed: the reservation settles by the plan's `reservation.onExpiry` after its TTL. */
  onCommitError?: (err: unknown) => void;
}

const UINT32_MAX = 4_294_967_295;
const MAX_DESCRIPTORS = 64;
const MAX_ENTRIES = 32;
const SECOND = 1000;
const DAY = 86_400_000;
const RATE_UNITS: ReadonlyMap<number, RlsUnit> = new Map([
  [SECOND, "SECOND"],
  [60 * SECOND, "MINUTE"],
  [3600 * SECOND, "HOUR"],
  [DAY, "DAY"],
  [7 * DAY, "WEEK"],
]);

/** The counter-store deadline the RLS quota service is built with: the answer's deadline less 5 ms. */
export function storeDeadlineMs(config: EnvoyConfig): number {
  return Math.max(1, config.deadlineMs - 5);
}

const clampU32 = (v: bigint | number): number => {
  const n = typeof v === "bigint" ? (v > BigInt(UINT32_MAX) ? UINT32_MAX : v < 0n ? 0 : Number(v)) : Math.min(UINT32_MAX, Math.max(0, Math.floor(v)));
  return n;
};

/** Envoy's unit for a limit: only a window that is exactly a second/minute/hour/day/week, or a monthly quota. */
function unitOf(l: LimitStatusOut): RlsUnit {
  if (l.windowMs === undefined) return "UNKNOWN";
  if (l.kind === "RATE") return RATE_UNITS.get(l.windowMs) ?? "UNKNOWN";
  if (l.kind === "QUOTA") {
    // Quota windows are daily, rolling-24h (both one day) or monthly (reported as 30 days by limits.ts).
    if (l.windowMs === DAY) return "DAY";
    if (l.windowMs === 30 * DAY) return "MONTH";
  }
  return "UNKNOWN";
}

/** A path's query string is not part of the method; anything that is not a method name gets the default weight. */
function methodName(value: string, fallback: string): string {
  const q = value.indexOf("?");
  const v = q >= 0 ? value.slice(0, q) : value;
  return METHOD_RE.test(v) ? v : fallback;
}

/** The limit closest to exhaustion (least remaining relative to its limit). Concurrency is left out: an RLS call
 * holds no slot past its answer (it is committed at once). */
function tightest(limits: readonly LimitStatusOut[]): LimitStatusOut | undefined {
  let best: LimitStatusOut | undefined;
  for (const l of limits) {
    if (l.kind === "ACCESS_WINDOW" || l.kind === "CONCURRENCY") continue;
    if (!best || l.remaining * (best.limit > 0n ? best.limit : 1n) < best.remaining * (l.limit > 0n ? l.limit : 1n)) best = l;
  }
  return best;
}

async function withDeadline<T>(p: Promise<T>, ms: number): Promise<{ value: T } | undefined> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p.then((value) => ({ value })), new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

interface Parsed {
  domain: EnvoyDomain;
  apiKey: string;
  keyId: string;
  method: string;
  hits: bigint;
  /** Per descriptor: does it carry the key, which limit does it name. */
  shapes: Array<{ key: boolean; limit?: string }>;
  conflict?: string;
}

export class EnvoyRateLimit {
  readonly #d: EnvoyRateLimitDeps;

  constructor(deps: EnvoyRateLimitDeps) {
    this.#d = deps;
  }

  async shouldRateLimit(req: RlsRequest): Promise<RlsAnswer> {
    if (!req.domain) throw new InvalidArgumentError("domain", "is required");
    const domain = Object.hasOwn(this.#d.config.domains, req.domain) ? this.#d.config.domains[req.domain] : undefined;
    this.#checkShape(req);
    if (!domain) {
      if (this.#d.config.unknownDomain === "ok") return unchecked(req, "UNKNOWN_DOMAIN", "");
      const known = Object.keys(this.#d.config.domains);
      throw new InvalidArgumentError("domain", `unknown domain ${JSON.stringify(req.domain.slice(0, 100))} (configured: ${known.length ? known.join(", ") : "none"})`);
    }
    const p = this.#parse(req, domain);
    const keyMode: Mode = domain.shadow ? "SHADOW" : "ENFORCE";
    if (p.conflict) return this.#answer(p, callDenial("KEY_INVALID"), keyMode);
    if (!p.apiKey && !p.keyId) {
      if (domain.missingKey === "ok") return unchecked(req, "KEY_MISSING", domain.product);
      return this.#answer(p, callDenial("KEY_INVALID"), keyMode);
    }
    if (p.keyId && !p.apiKey && !KEY_ID_RE.test(p.keyId)) return this.#answer(p, callDenial("KEY_INVALID"), keyMode);

    const mode: Mode = p.hits === 0n ? "CHECK_ONLY" : domain.shadow ? "SHADOW" : "ENFORCE";
    const check: CheckRequest = {
      apiKey: p.apiKey,
      keyId: p.apiKey ? "" : p.keyId,
      product: domain.product,
      method: p.method,
      // One hit is one call at the method's plan weight; N hits cost N units (the gateway says what the call costs).
      ...(p.hits > 1n ? { cost: p.hits } : {}),
      meters: {},
      idempotencyId: "",
      mode,
    };
    const pending = this.#d.quota.checkAndReserve(check);
    let answer: CheckAnswer;
    try {
      const r = await withDeadline(pending, this.#d.config.deadlineMs);
      if (!r) {
        // Not answered in time (a key cache miss waiting on Postgres, or a restore): the domain's failure mode. A
        // reservation made after this answer is settled by what we answered: committed if the call went ahead (open),
        // cancelled if it was refused (closed).
        const outcome = domain.failureMode === "open" && mode !== "CHECK_ONLY" ? "COMMIT" : "CANCEL";
        pending.then((a) => (a.reservationId ? this.#d.quota.release({ reservationId: a.reservationId, outcome, actualMeters: {} }) : undefined)).catch(() => {});
        answer = failure(domain.failureMode);
      } else answer = r.value;
    } catch (e) {
      if (!(e instanceof QuotaError) || e.code !== "UNAVAILABLE") throw e;
      answer = failure(domain.failureMode);
    }
    if (answer.decision === "ALLOWED" && answer.reservationId && mode !== "CHECK_ONLY") {
      // RLS has no Release: commit at once, off the answer's path (same connection, so it runs right after).
      this.#d.quota.release({ reservationId: answer.reservationId, outcome: "COMMIT", actualMeters: {} }).catch((e) => this.#d.onCommitError?.(e));
    }
    return this.#answer(p, answer, mode);
  }

  /** Shapes Envoy's own configuration produces; anything else is INVALID_ARGUMENT naming the field. */
  #checkShape(req: RlsRequest): void {
    if (req.descriptors.length === 0) throw new InvalidArgumentError("descriptors", "at least one descriptor is required");
    if (req.descriptors.length > MAX_DESCRIPTORS) throw new InvalidArgumentError("descriptors", `at most ${MAX_DESCRIPTORS} descriptors`);
    req.descriptors.forEach((d, i) => {
      if (d.entries.length === 0) throw new InvalidArgumentError(`descriptors[${i}].entries`, "must not be empty");
      if (d.entries.length > MAX_ENTRIES) throw new InvalidArgumentError(`descriptors[${i}].entries`, `at most ${MAX_ENTRIES} entries`);
      d.entries.forEach((e, j) => {
        if (!e.key) throw new InvalidArgumentError(`descriptors[${i}].entries[${j}].key`, "is required");
      });
      if (d.hitsAddend !== undefined && d.hitsAddend > MAX_AMOUNT) throw new InvalidArgumentError(`descriptors[${i}].hits_addend`, "is too large (at most 1e15)");
    });
  }

  #parse(req: RlsRequest, domain: EnvoyDomain): Parsed {
    let apiKey = "";
    let keyId = "";
    let method = "";
    let conflict: string | undefined;
    let hits: bigint | undefined;
    const requestHits = BigInt(req.hitsAddend === 0 ? 1 : req.hitsAddend);
    const shapes = req.descriptors.map((d) => {
      let key = false;
      let limit: string | undefined;
      for (const e of d.entries) {
        if (e.key === domain.apiKeyEntry && e.value) {
          key = true;
          if (apiKey && apiKey !== e.value) conflict = "descriptors carry different API keys";
          apiKey ||= e.value;
        } else if (domain.keyIdEntry && e.key === domain.keyIdEntry && e.value) {
          key = true;
          if (keyId && keyId !== e.value) conflict = "descriptors carry different key ids";
          keyId ||= e.value;
        } else if (e.key === domain.methodEntry && e.value && !method) {
          method = e.value;
        } else if (e.key === domain.limitEntry && e.value && limit === undefined) {
          limit = e.value;
        }
      }
      if (key || limit !== undefined) {
        // A descriptor's own hits_addend wins (0 = check without counting); else the request's. The call costs the
        // largest of its descriptors' hits: one atomic check, never under-counted.
        const h = d.hitsAddend ?? requestHits;
        hits = hits === undefined || h > hits ? h : hits;
      }
      return { key, ...(limit !== undefined ? { limit } : {}) };
    });
    return {
      domain,
      apiKey,
      keyId,
      method: methodName(method, domain.defaultMethod),
      hits: hits ?? requestHits,
      shapes,
      ...(conflict ? { conflict } : {}),
    };
  }

  #answer(p: Parsed, decided: CheckAnswer, mode: Mode): RlsAnswer {
    let a = decided;
    if (p.domain.shadow && a.decision === "DENIED") {
      // Shadow domains always answer OK, whatever denied (the core does the same for SHADOW mode; this covers key
      // problems found here, outages and check-only calls).
      const { reason, ...rest } = a;
      a = { ...rest, decision: "ALLOWED", ...(reason ? { shadowReason: reason } : {}) };
    }
    const denied = a.decision === "DENIED";
    const now = this.#d.clock.now();
    const byName = new Map(a.limits.map((l) => [l.name, l]));
    const callLimit = a.deniedLimit ? byName.get(a.deniedLimit) : tightest(a.limits);
    const statuses = p.shapes.map((s): RlsStatus => {
      if (!s.key && s.limit === undefined) return { code: "OK", remaining: 0 };
      const l = s.limit !== undefined ? byName.get(s.limit) : callLimit;
      if (!l) {
        // A call-level denial (key, product, outage, time gate) has no limit: every descriptor of the call is over.
        // A named limit that is not among the call's limits maps to nothing.
        return { code: denied && (a.limits.length === 0 || s.limit === undefined) ? "OVER_LIMIT" : "OK", remaining: 0 };
      }
      const status: RlsStatus = {
        code: denied && (l.exceeded || l.name === a.deniedLimit) ? "OVER_LIMIT" : "OK",
        limit: { name: l.name, requestsPerUnit: clampU32(l.limit), unit: unitOf(l) },
        remaining: clampU32(l.remaining),
      };
      if (l.resetAt !== undefined) status.resetSeconds = clampU32(Math.ceil((l.resetAt - now) / 1000));
      return status;
    });
    const headers = Object.entries(a.headers);
    const metadata: RlsAnswer["metadata"] = {
      decision: a.decision,
      reason: a.reason ?? "",
      reservation_id: a.reservationId,
      mode,
      product: p.domain.product,
      key_id: p.apiKey ? (parseApiKey(p.apiKey)?.keyId ?? "") : p.keyId,
      fail_open: a.failOpen,
    };
    if (a.shadowReason) metadata.shadow_reason = a.shadowReason;
    if (a.deniedLimit) metadata.denied_limit = a.deniedLimit;
    const out: RlsAnswer = { code: denied ? "OVER_LIMIT" : "OK", statuses, headers, metadata };
    if (denied) {
      headers.push(["content-type", "application/json"]);
      out.body = JSON.stringify({
        reason: a.reason ?? "UNKNOWN",
        retry_after: a.retryAfterMs !== undefined ? Math.max(1, Math.ceil(a.retryAfterMs / 1000)) : null,
        denied_limit: a.deniedLimit,
      });
    }
    return out;
  }
}

function emptyAnswer(): CheckAnswer {
  return { decision: "DENIED", reservationId: "", overage: false, limits: [], headers: {}, cost: 0n, reservedSpendMicros: 0n, failOpen: false, deniedLimit: "", replayed: false };
}

function callDenial(reason: "KEY_INVALID"): CheckAnswer {
  return { ...emptyAnswer(), reason };
}

function failure(mode: "open" | "closed"): CheckAnswer {
  return mode === "open" ? { ...emptyAnswer(), decision: "ALLOWED", failOpen: true } : { ...emptyAnswer(), reason: "UNAVAILABLE" };
}

/** Not checked by policy (unknown domain or no key, configured as "ok"): every descriptor OK. */
function unchecked(req: RlsRequest, why: string, product: string): RlsAnswer {
  return {
    code: "OK",
    statuses: req.descriptors.map(() => ({ code: "OK", remaining: 0 })),
    headers: [],
    metadata: { decision: "NOT_CHECKED", reason: why, reservation_id: "", mode: "", product, key_id: "", fail_open: false },
  };
}
