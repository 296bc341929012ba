/**
 * Prometheus metrics and spans at the adapter and store boundaries: the core is not touched. The API object is
 * wrapped (one span per RPC; decisions by reason, limit kind and plan — never by key or account), and the counter
 * store and the database are wrapped (latency and errors per operation, a child span per call).
 */
import { SpanKind, SpanStatusCode, type Tracer } from "@opentelemetry/api";
import { Counter, Gauge, Histogram, type Registry } from "prom-client";
import type { KeyCache } from "../core/key-cache.ts";
import { parseApiKey } from "../core/ids.ts";
import { reservationTtlMs } from "../core/plan.ts";
import { Decision, DenyReason, LimitKind, Mode } from "../gen/quota/v1/types_pb.ts";
import type { Api } from "../transport/api.ts";
import { ANSWER_PLAN } from "../transport/quota-api.ts";
import { InFlightReservations } from "./in-flight.ts";

const FAST = [0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1];

export interface Metrics {
  decisions: Counter;
  /** Counts one decision of `decisions` (see DecisionCounts). */
  decided: DecisionCounts;
  storeDuration: Histogram;
  storeErrors: Counter;
  dbDuration: Histogram;
  dbErrors: Counter;
  keyCacheLookups: Counter;
  /** Counts one key cache lookup of `keyCacheLookups` (counted here, handed to prom-client at collection). */
  keyCacheLookup(hit: boolean): void;
  reservationsInFlight: Gauge;
  flushLag: Gauge;
  reconcileLag: Gauge;
  /** Records a successful flush / reconcile run (the lag gauges count from these). */
  flushed(): void;
  reconciled(): void;
}

export function createMetrics(registry: Registry, now: () => number = Date.now): Metrics & { inFlight: InFlightReservations } {
  const registers = [registry];
  const inFlight = new InFlightReservations();
  let lastFlush = now();
  let lastReconcile = now();
  // Counted on every call: kept here until a collection, not passed through prom-client's label hashing per call.
  const decided = new DecisionCounts();
  const lookups = { hit: 0, miss: 0 };
  const decisions = new Counter({
    name: "quota_decisions_total",
    help: "CheckAndReserve decisions (SHADOW would-be denials: mode=SHADOW with the reason)",
    labelNames: ["decision", "reason", "mode", "fail_open", "limit_kind", "plan"],
    registers,
    collect() {
      decided.flush(this);
    },
  });
  const keyCacheLookups = new Counter({
    name: "quota_key_cache_lookups_total",
    help: "API key cache lookups (hit ratio = hit / all)",
    labelNames: ["result"],
    registers,
    collect() {
      if (lookups.hit > 0) this.inc({ result: "hit" }, lookups.hit);
      if (lookups.miss > 0) this.inc({ result: "miss" }, lookups.miss);
      lookups.hit = lookups.miss = 0;
    },
  });
  // A reset (registry.resetMetrics(), counter.reset()) drops what is counted here since the last collection too.
  onReset(decisions, () => decided.clear());
  onReset(keyCacheLookups, () => void (lookups.hit = lookups.miss = 0));
  return {
    inFlight,
    decided,
    decisions,
    storeDuration: new Histogram({ name: "quota_store_duration_seconds", help: "Counter store (Redis) call latency", labelNames: ["store", "op"], buckets: FAST, registers }),
    storeErrors: new Counter({ name: "quota_store_errors_total", help: "Counter store (Redis) calls that failed", labelNames: ["store", "op"], registers }),
    dbDuration: new Histogram({ name: "quota_db_duration_seconds", help: "Postgres call latency (one unit of work per transaction/read)", labelNames: ["op"], buckets: FAST, registers }),
    dbErrors: new Counter({ name: "quota_db_errors_total", help: "Postgres calls that failed", labelNames: ["op"], registers }),
    keyCacheLookups,
    keyCacheLookup: (hit) => void (hit ? lookups.hit++ : lookups.miss++),
    reservationsInFlight: new Gauge({
      name: "quota_reservations_in_flight",
      help: "Reservations made through this process and neither released nor past their TTL",
      registers,
      collect() {
        this.set(inFlight.count(now()));
      },
    }),
    flushLag: new Gauge({ name: "quota_flush_lag_seconds", help: "Seconds since usage was last flushed to Postgres successfully", registers, collect() { this.set((now() - lastFlush) / 1000); } }),
    reconcileLag: new Gauge({ name: "quota_reconcile_lag_seconds", help: "Seconds since the capacity reconciler last ran successfully", registers, collect() { this.set((now() - lastReconcile) / 1000); } }),
    flushed: () => void (lastFlush = now()),
    reconciled: () => void (lastReconcile = now()),
  };
}

type AnyFn = (...args: unknown[]) => unknown;

export function instrumentStore<T extends object>(store: T, kind: "redis" | "memory", m: Metrics, tracer: Tracer | undefined): T {
  return timed(store, kind === "redis" ? "redis" : "counters", tracer, (op) => {
    const duration = m.storeDuration.labels({ store: kind, op });
    const errors = m.storeErrors.labels({ store: kind, op });
    return (seconds, failed) => {
      duration.observe(seconds);
      if (failed) errors.inc();
    };
  });
}

export function instrumentDatabase<T extends object>(db: T, m: Metrics, tracer: Tracer | undefined): T {
  return timed(db, "postgres", tracer, (op) => {
    const duration = m.dbDuration.labels({ op });
    const errors = m.dbErrors.labels({ op });
    return (seconds, failed) => {
      duration.observe(seconds);
      if (failed) errors.inc();
    };
  });
}

const SKIP = new Set(["close"]);

/**
 * Wraps every method of `target` (they are all async on these ports): latency and failure per operation, and —
 * only when tracing is on — a client span `${prefix} ${op}`, a child of the RPC's span. Label children are bound
 * once per operation, so a call costs two clock reads and one observe (no label hashing) when tracing is off.
 */
function timed<T extends object>(target: T, prefix: string, tracer: Tracer | undefined, observer: (op: string) => (seconds: number, failed: boolean) => void): T {
  const cache = new Map<string, AnyFn>();
  const system = prefix === "postgres" ? "postgresql" : prefix === "redis" ? "redis" : "memory";
  return new Proxy(target, {
    get(t, prop) {
      const value = Reflect.get(t, prop, t) as unknown;
      if (typeof value !== "function") return value;
      if (typeof prop !== "string" || SKIP.has(prop)) return (value as AnyFn).bind(t);
      let wrapped = cache.get(prop);
      if (!wrapped) {
        const fn = value as (...args: unknown[]) => Promise<unknown>;
        const observe = observer(prop);
        wrapped = tracer
          ? (...args: unknown[]) =>
              tracer.startActiveSpan(`${prefix} ${prop}`, { kind: SpanKind.CLIENT, attributes: { "db.system.name": system, "db.operation.name": prop } }, async (span) => {
                const start = performance.now();
                let failed = false;
                try {
                  return await fn.apply(t, args);
                } catch (e) {
                  failed = true;
                  span.recordException(e as Error);
                  span.setStatus({ code: SpanStatusCode.ERROR, message: (e as Error).message });
                  throw e;
                } finally {
                  observe((performance.now() - start) / 1000, failed);
                  span.end();
                }
              })
          : (...args: unknown[]) => {
              const start = performance.now();
              return fn.apply(t, args).then(
                (r) => (observe((performance.now() - start) / 1000, false), r),
                (e: unknown) => {
                  observe((performance.now() - start) / 1000, true);
                  throw e;
                },
              );
            };
        cache.set(prop, wrapped);
      }
      return wrapped;
    },
  });
}

/** protobuf-es enums are plain objects without reverse mapping: number -> name. */
function names(e: Record<string, number | string>): (v: number) => string {
  const r = new Map<number, string>(Object.entries(e).filter(([, v]) => typeof v === "number").map(([k, v]) => [v as number, k]));
  return (v) => r.get(v) ?? String(v);
}
const decisionName = names(Decision);
const reasonName = names(DenyReason);
const modeName = names(Mode);
const kindName = names(LimitKind);

/** Runs `also` whenever `counter` is reset, before prom-client's own reset. */
function onReset(counter: Counter, also: () => void): void {
  const reset = counter.reset.bind(counter);
  counter.reset = () => {
    also();
    reset();
  };
}

type DecisionLabels = Record<"decision" | "reason" | "mode" | "fail_open" | "limit_kind" | "plan", string>;

/**
 * quota_decisions_total, counted here per label set and handed to the prom-client counter when it is collected (a
 * scrape): prom-client's inc() builds and looks up a string of the six labels, and a decision is counted on every
 * call. A label set is found by its numbers (the answer's enums, then the plan), without building anything; its
 * labels are made the first time it is seen.
 */
export class DecisionCounts {
  readonly #byPlan = new Map<string, Map<number, { labels: DecisionLabels; n: number }>>();

  /** Forgets what was counted since the last flush (the counter was reset). */
  clear(): void {
    this.#byPlan.clear();
  }

  /** `kind`: the kind of the limit that decided, if one did. */
  count(counter: Counter, plan: string, decision: Decision, reason: DenyReason, mode: Mode, failOpen: boolean, kind: LimitKind | undefined): void {
    const k = kind === undefined ? 0 : kind + 1;
    if (decision > 63 || reason > 63 || mode > 63 || k > 63 || decision < 0 || reason < 0 || mode < 0 || k < 0) {
      counter.inc(decisionLabels(plan, decision, reason, mode, failOpen, kind));
      return;
    }
    const code = (((decision * 64 + reason) * 64 + mode) * 64 + k) * 2 + (failOpen ? 1 : 0);
    let sets = this.#byPlan.get(plan);
    if (sets === undefined) this.#byPlan.set(plan, (sets = new Map()));
    const set = sets.get(code);
    if (set === undefined) sets.set(code, { labels: decisionLabels(plan, decision, reason, mode, failOpen, kind), n: 1 });
    else set.n++;
  }

  /** Adds what was counted since the last flush to `counter`. */
  flush(counter: Counter): void {
    for (const sets of this.#byPlan.values()) {
      for (const set of sets.values()) {
        if (set.n === 0) continue;
        counter.inc(set.labels, set.n);
        set.n = 0;
      }
    }
  }
}

function decisionLabels(plan: string, decision: Decision, reason: DenyReason, mode: Mode, failOpen: boolean, kind: LimitKind | undefined): DecisionLabels {
  return {
    decision: decisionName(decision),
    reason: reason ? reasonName(reason) : "",
    mode: mode === Mode.MODE_UNSPECIFIED ? "ENFORCE" : modeName(mode),
    fail_open: String(failOpen),
    limit_kind: kind !== undefined ? kindName(kind) : "",
    plan,
  };
}

const RPC_NAMES: Record<"quota" | "admin", string> = { quota: "quota.v1.QuotaService", admin: "quota.v1.QuotaAdminService" };
const pascal = (s: string) => s[0]!.toUpperCase() + s.slice(1);

/**
 * One server span per RPC (`quota.v1.QuotaService/CheckAndReserve`), active while the call runs so store and
 * database spans nest under it; decisions counted with their plan and the kind of the limit that decided.
 */
export function instrumentApi(api: Api, deps: { metrics: Metrics & { inFlight: InFlightReservations }; tracer: Tracer; keys: KeyCache; now?: () => number }): Api {
  const { metrics: m, tracer, keys } = deps;
  const now = deps.now ?? Date.now;
  const wrapService = <S extends object>(service: S, name: "quota" | "admin"): S => {
    const out: Record<string, AnyFn> = {};
    for (const [method, fn] of Object.entries(service) as Array<[string, AnyFn]>) {
      const spanName = `${RPC_NAMES[name]}/${pascal(method)}`;
      // Made once per method (a tracer reads them, never changes them), not per call.
      const spanOptions = { kind: SpanKind.SERVER, attributes: { "rpc.system.name": "grpc", "rpc.method": spanName } };
      out[method] = (...args: unknown[]) =>
        tracer.startActiveSpan(spanName, spanOptions, async (span) => {
          try {
            const res = await fn(...args);
            if (method === "checkAndReserve") onCheck(args[0] as CheckReq, res as CheckRes, span);
            if (method === "release") m.inFlight.release((args[0] as { reservationId: string }).reservationId);
            return res;
          } catch (e) {
            span.setStatus({ code: SpanStatusCode.ERROR, message: (e as Error).message });
            throw e;
          } finally {
            span.end();
          }
        });
    }
    return out as S;
  };

  type CheckReq = { apiKey: string; mode: Mode; reservationTtl?: { seconds: bigint; nanos: number } };
  type CheckRes = { decision: Decision; reason: DenyReason; shadowReason: DenyReason; failOpen: boolean; reservationId: string; limits: Array<{ kind: LimitKind; exceeded: boolean }> };
  const onCheck = (req: CheckReq, res: CheckRes, span: { setAttribute(k: string, v: string | boolean): unknown }) => {
    const parsed = parseApiKey(req.apiKey);
    const ctx = parsed ? keys.peek(parsed.keyId) : undefined;
    // The plan the call was decided by; the key cache may no longer (or not yet) hold the key.
    const plan = ANSWER_PLAN.get(res) ?? ctx?.plan.id ?? "";
    const reason = res.reason || res.shadowReason;
    let decided: LimitKind | undefined;
    for (const l of res.limits) {
      if (!l.exceeded) continue;
      decided = l.kind;
      break;
    }
    m.decided.count(m.decisions, plan, res.decision, reason, req.mode, res.failOpen, decided);
    span.setAttribute("quota.decision", decisionName(res.decision));
    if (reason) span.setAttribute("quota.reason", reasonName(reason));
    if (plan) span.setAttribute("quota.plan", plan);
    if (res.reservationId) {
      // What is past its TTL is forgotten as new ones come, not only when the gauge is scraped (in-flight.ts).
      const spec = ctx?.plan.spec as { reservation?: { ttl?: string } } | undefined;
      const ttlMs = req.reservationTtl ? Number(req.reservationTtl.seconds) * 1000 + req.reservationTtl.nanos / 1e6 : spec?.reservation?.ttl ? reservationTtlMs(spec as { reservation: { ttl: string } }) : 30_000;
      const t = now();
      m.inFlight.add(res.reservationId, t + ttlMs, t);
    }
  };
  return { quota: wrapService(api.quota, "quota"), admin: wrapService(api.admin, "admin") };
}
