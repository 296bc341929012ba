/**
 * `createQuotaClient`: typed calls to the quota service's data plane (QuotaService) over gRPC (the gRPC port) or
 * Connect (the HTTP port), both through @connectrpc/connect-node on one HTTP/2 connection.
 *
 * The hot path (`checkAndReserve`, `release`) speaks plain TypeScript: enum names as strings, counters as
 * `bigint`, durations in milliseconds. `topUp` and `getLimits` take and return the generated protobuf-es shapes,
 * which the proto files document field by field (money stays `Money {units, nanos}`: exact, never a float).
 */
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import type { Duration, Timestamp } from "@bufbuild/protobuf/wkt";
import { createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { Http2SessionManager, createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import type * as http2 from "node:http2";
import { Batcher, checkBatchingOptions, type BatchingOptions, type ItemResult } from "./batching.ts";
import { QuotaInputError, QuotaUnavailableError, toQuotaError } from "./errors.ts";
import { LeaseManager, checkLeaseOptions, type LeaseInfo, type LeaseOptions } from "./leases.ts";
import {
  CheckAndReserveRequestSchema,
  type BatchItemError,
  type LeaseResponse,
  type ReleaseResponse,
  type CheckAndReserveRequest,
  type CheckAndReserveResponse,
  type GetLimitsRequestSchema,
  type GetLimitsResponse,
  Outcome as OutcomeEnum,
  QuotaService,
  ReleaseStateSchema,
  type TopUpRequestSchema,
  type TopUpResponse,
} from "./gen/quota/v1/quota_pb.ts";
import { DecisionSchema, DenyReasonSchema, LimitKindSchema, Mode as ModeEnum, ScopeSchema, type LimitStatus } from "./gen/quota/v1/types_pb.ts";

export type TransportKind = "grpc" | "connect";

/**
 * What `checkAndReserve` answers when the quota service cannot answer (no answer within the deadline, connection
 * refused, a server-side failure): `"closed"` denies with reason `UNAVAILABLE`, `"open"` admits without a
 * reservation and flags `failOpen`. Either way `result.unavailable` carries the error, so a caller can tell this
 * apart from a real decision.
 */
export type FailureMode = "open" | "closed";

export interface QuotaClientOptions {
  /** `host:port` (plain h2c) or a URL (`http://host:port`, `https://host:port`). With `transport: "grpc"` this is
   * the service's gRPC port (default 50051), with `"connect"` its HTTP port (default 8080). */
  address: string;
  /** `"grpc"` (default) or `"connect"`. */
  transport?: TransportKind;
  /** The data-plane service token, sent as `authorization: Bearer <token>`; undefined or "" sends none. */
  token?: string;
  /**
   * Deadline of `checkAndReserve` and `release`, in ms (default 1000). Sent to the server too (grpc-timeout). The
   * server answers by its plan's failure mode within its own counter-store deadline (50 ms by default), so this one
   * covers what the server cannot: a process that is down or hangs, a broken network, and the first call per key,
   * which loads the key from Postgres (about 300 ms measured on a loaded 2-core CI machine; warm calls take ms).
   */
  deadlineMs?: number;
  /** Deadline of `topUp` and `getLimits`, which commit to or read from Postgres, in ms (default 10,000). */
  controlDeadlineMs?: number;
  /** The policy when the service is unavailable (default `"closed"`). Overridable per call. */
  failureMode?: FailureMode;
  /** For `https://` addresses: CA, and client certificate and key for mTLS (PEM). */
  tls?: { ca?: string | Buffer; cert?: string | Buffer; key?: string | Buffer };
  /** Only for `transport: "connect"`: `"2"` (default, h2c or h2) or `"1.1"` (for proxies without HTTP/2). */
  httpVersion?: "1.1" | "2";
  /** Extra connect interceptors (tracing, logging), applied after the token. */
  interceptors?: Interceptor[];
  /**
   * Automatic batching (off by default): the `checkAndReserve` calls issued in the same tick (or within
   * `maxDelayMs`) go as ONE CheckAndReserveBatch, and the `release` calls as one ReleaseBatch; each promise still
   * settles with its own answer or error, deadline, signal and failure policy. `true` means `{}` (maxBatch 100,
   * maxDelayMs 0). Calls with their own `headers` are sent alone. Needs a server with the batch RPCs.
   */
  batching?: BatchingOptions | boolean;
  /**
   * Local leases (off by default): fixed-cost ENFORCE calls are admitted in this process on leases of `calls` calls
   * taken in advance from the server, with no RPC per call. A locally admitted call has no reservation
   * (`reservationId` undefined, `lease` set): there is nothing to release. `true` means `{}`. See the README.
   */
  leases?: LeaseOptions | boolean;
}

export interface CallOptions {
  /** This call's deadline in ms, replacing the client's. */
  deadlineMs?: number;
  /** Aborts the call (rejects with `QuotaCanceledError`; no failure policy applies). */
  signal?: AbortSignal;
  /** Extra request headers / metadata. */
  headers?: Record<string, string>;
}

export interface CheckOptions extends CallOptions {
  /** This call's failure policy, replacing the client's. */
  failureMode?: FailureMode;
  /** With `leases` on: `false` decides this call remotely (a reservation you want to release with its actual
   * cost). Calls with `cost`, `estimatedSpendMicros`, `meters`, `idempotencyId`, `reservationTtlMs` or a mode other
   * than ENFORCE are always remote. */
  lease?: boolean;
}

export type Mode = "ENFORCE" | "CHECK_ONLY" | "SHADOW";
export type Decision = "ALLOWED" | "DENIED";
export type DenyReason =
  | "RATE_LIMITED"
  | "QUOTA_EXHAUSTED"
  | "CONCURRENCY_LIMITED"
  | "BUDGET_EXHAUSTED"
  | "KEY_INVALID"
  | "KEY_REVOKED"
  | "KEY_EXPIRED"
  | "SUBSCRIPTION_ENDED"
  | "SUBSCRIPTION_NOT_STARTED"
  | "OUTSIDE_ACCESS_WINDOW"
  | "PRODUCT_NOT_ALLOWED"
  | "UNAVAILABLE";
export type Outcome = "COMMIT" | "CANCEL";
export type ReleaseState = "COMMITTED" | "CANCELLED" | "EXPIRED_CHARGED" | "EXPIRED_REFUNDED";

/** An integer amount: a `bigint`, or a `number` that is a safe integer. */
export type Amount = bigint | number;

export type KeyRef = { apiKey: string; keyId?: never } | { keyId: string; apiKey?: never };

/** One call to admit (QuotaService.CheckAndReserve; the proto documents each field's range). */
export type CheckRequest = KeyRef & {
  product: string;
  /** The method being called (selects the plan's cost weight), 1-128 characters of [A-Za-z0-9_.:/-]. */
  method: string;
  /** Explicit cost in units, overriding the plan's method weight. */
  cost?: Amount;
  /** Estimated spend in micro-USD for budget (credit) limits. */
  estimatedSpendMicros?: Amount;
  /** Estimated usage of named meters (e.g. `{ tokens: 1000 }`). */
  meters?: Record<string, Amount>;
  /** Retrying with the same id returns the same reservation and charges once. */
  idempotencyId?: string;
  /** How long the reservation lives without a Release (server default 30 s). Whole seconds or milliseconds. */
  reservationTtlMs?: number;
  mode?: Mode;
};

export interface LimitState {
  name: string;
  scope: "KEY" | "SUBSCRIPTION" | "ACCOUNT";
  kind: "RATE" | "QUOTA" | "CONCURRENCY" | "BUDGET" | "ACCESS_WINDOW";
  unit: string;
  limit: bigint;
  used: bigint;
  remaining: bigint;
  /** When the window or period resets; undefined for limits that never reset. */
  resetsAt: Date | undefined;
  windowMs: number | undefined;
  overage: bigint;
  exceeded: boolean;
  product: string;
}

interface CheckResultCommon {
  /** One status per limit that applied (empty when the client answered by its failure policy). */
  limits: LimitState[];
  /** Ready-to-send HTTP headers from the server (`RateLimit-Policy`, `RateLimit`, `X-UnitsLimit-*`, `Retry-After`). */
  headers: Record<string, string>;
  /** How long to wait before retrying, when the server said so. */
  retryAfterMs: number | undefined;
  /** The units charged to quota limits. */
  cost: bigint;
  reservedSpendMicros: bigint;
  /** True when this answer repeats an earlier one for the same idempotency id. */
  replayed: boolean;
  /** Set when the client (not the server) made this answer because the service was unavailable. */
  unavailable: QuotaUnavailableError | undefined;
}

export interface AllowedResult extends CheckResultCommon {
  allowed: true;
  decision: "ALLOWED";
  reason: undefined;
  /** The reservation to release; undefined in CHECK_ONLY mode, when admitted by a fail-open policy and when
   * admitted locally on a lease (`lease` set). Undefined means: nothing to release. */
  reservationId: string | undefined;
  /** Set when this process admitted the call on a lease, without an RPC (no reservation: nothing to release; the
   * lease is settled by the client). Undefined for remote decisions. */
  lease: LeaseInfo | undefined;
  /** Admitted past an exhausted quota because overage is enabled for the key. */
  overage: boolean;
  /** Admitted without counting because the counter store (server side) or the service (client side,
   * `unavailable` set) could not be reached and the policy fails open. */
  failOpen: boolean;
  /** In SHADOW mode: the reason the call would have been denied. */
  shadowReason: DenyReason | undefined;
}

export interface DeniedResult extends CheckResultCommon {
  allowed: false;
  decision: "DENIED";
  reason: DenyReason;
  /** The limit that denied the call (empty when the client answered by its failure policy). */
  deniedLimit: string;
  /** For OUTSIDE_ACCESS_WINDOW and SUBSCRIPTION_NOT_STARTED: when access opens. */
  availableAt: Date | undefined;
}

export type CheckResult = AllowedResult | DeniedResult;

/** Settles a reservation (QuotaService.Release). */
export interface ReleaseRequest {
  reservationId: string;
  /** `"COMMIT"` (default: charge the actual cost) or `"CANCEL"` (refund in full). */
  outcome?: Outcome;
  /** The real cost in units (default: the reserved cost). */
  actualCost?: Amount;
  /** The real spend in micro-USD (default: priced from `actualMeters`, else the reserved spend). */
  actualSpendMicros?: Amount;
  /** The real usage of named meters. */
  actualMeters?: Record<string, Amount>;
}

export interface ReleaseResult {
  state: ReleaseState;
  chargedCost: bigint;
  refundedCost: bigint;
  chargedSpendMicros: bigint;
  overage: bigint;
  replayed: boolean;
}

export type TopUpRequest = MessageInitShape<typeof TopUpRequestSchema>;
export type GetLimitsRequest = MessageInitShape<typeof GetLimitsRequestSchema>;

export interface QuotaClient {
  /** Admits one call and reserves its cost. A denial is a result (`allowed: false`), never an error; an unavailable
   * service is answered by the failure policy. Throws `QuotaInputError` / `QuotaRequestError` for bad requests. */
  checkAndReserve(request: CheckRequest, options?: CheckOptions): Promise<CheckResult>;
  /** Settles a reservation. Idempotent, so it is safe to retry; throws `QuotaUnavailableError` when the service
   * cannot be reached (the reservation then expires by the plan's policy). */
  release(request: ReleaseRequest, options?: CallOptions): Promise<ReleaseResult>;
  /** QuotaService.TopUp (protobuf-es shapes). */
  topUp(request: TopUpRequest, options?: CallOptions): Promise<TopUpResponse>;
  /** QuotaService.GetLimits (protobuf-es shapes). */
  getLimits(request: GetLimitsRequest, options?: CallOptions): Promise<GetLimitsResponse>;
  /** The client's failure policy. */
  readonly failureMode: FailureMode;
  /** Settles the open leases (one Lease call per key, within the client's deadline), then closes the HTTP/2
   * connection; calls after close reconnect. Await it to know the leases are settled. */
  close(): Promise<void>;
}

/**
 * How one decision reaches the server: one CheckAndReserve RPC (`direct`), or automatic batching (`batching.ts`),
 * which collects the decisions issued in the same tick, sends them as one CheckAndReserveBatch and resolves each
 * promise with its own answer or error. Everything around it — input validation, per-call deadlines and signals,
 * the failure policy, the result shape — is per decision, so callers and middleware do not change with it.
 */
interface DecisionPath {
  decide(request: CheckAndReserveRequest, call: { timeoutMs: number; signal?: AbortSignal; headers?: Record<string, string> }): Promise<CheckAndReserveResponse>;
}

const DEFAULT_DEADLINE_MS = 1000;
const DEFAULT_CONTROL_DEADLINE_MS = 10_000;

export function createQuotaClient(options: QuotaClientOptions): QuotaClient {
  const transportKind = options.transport ?? "grpc";
  if (transportKind !== "grpc" && transportKind !== "connect") throw new QuotaInputError("transport", `must be "grpc" or "connect", got ${JSON.stringify(transportKind)}`);
  const baseUrl = parseAddress(options.address);
  const deadlineMs = positiveMs("deadlineMs", options.deadlineMs ?? DEFAULT_DEADLINE_MS);
  const controlDeadlineMs = positiveMs("controlDeadlineMs", options.controlDeadlineMs ?? DEFAULT_CONTROL_DEADLINE_MS);
  const failureMode = options.failureMode ?? "closed";
  checkFailureMode("failureMode", failureMode);
  // Like the server's QUOTA_SERVICE_TOKEN: empty means none, so `token: process.env.QUOTA_SERVICE_TOKEN` just works.
  if (options.token !== undefined && (typeof options.token !== "string" || /[\r\n]/.test(options.token))) {
    throw new QuotaInputError("token", "must be a string without line breaks");
  }
  if (options.httpVersion !== undefined && (transportKind !== "connect" || (options.httpVersion !== "1.1" && options.httpVersion !== "2"))) {
    throw new QuotaInputError("httpVersion", `only for transport "connect", "1.1" or "2"`);
  }

  const interceptors: Interceptor[] = [];
  if (options.token) {
    const bearer = `Bearer ${options.token}`;
    interceptors.push((next) => (req) => {
      req.header.set("authorization", bearer);
      return next(req);
    });
  }
  interceptors.push(...(options.interceptors ?? []));

  // Only the TLS material: valid both as http2.connect and as https.request options.
  const nodeOptions: Pick<http2.SecureClientSessionOptions, "ca" | "cert" | "key"> = {};
  if (options.tls) {
    if (!baseUrl.startsWith("https:")) throw new QuotaInputError("tls", "needs an https:// address");
    const { ca, cert, key } = options.tls;
    Object.assign(nodeOptions, ca !== undefined ? { ca } : {}, cert !== undefined ? { cert } : {}, key !== undefined ? { key } : {});
  }
  let sessionManager: Http2SessionManager | undefined;
  let transport: Transport;
  if (transportKind === "connect" && options.httpVersion === "1.1") {
    transport = createConnectTransport({ baseUrl, httpVersion: "1.1", useBinaryFormat: true, interceptors, nodeOptions });
  } else {
    // One manager, so close() can end the connection; it reconnects on the next call.
    sessionManager = new Http2SessionManager(baseUrl, { idleConnectionTimeoutMs: 60_000 }, nodeOptions);
    transport =
      transportKind === "grpc"
        ? createGrpcTransport({ baseUrl, sessionManager, interceptors })
        : createConnectTransport({ baseUrl, httpVersion: "2", sessionManager, useBinaryFormat: true, interceptors });
  }
  const rpc: Client<typeof QuotaService> = createClient(QuotaService, transport);
  const direct: DecisionPath = { decide: (request, call) => rpc.checkAndReserve(request, call) };
  const batchOptions = options.batching === undefined || options.batching === false ? undefined : checkBatchingOptions("batching", options.batching);
  let path = direct;
  let releaseOne = (request: ReturnType<typeof toReleaseRequest>, call: ReturnType<typeof callOf>) => rpc.release(request, call);
  if (batchOptions) {
    const decisions = new Batcher<CheckAndReserveRequest, CheckAndReserveResponse>(
      async (requests, call) => (await rpc.checkAndReserveBatch({ requests }, call)).results.map((r) => itemOf(r.result)),
      batchOptions,
    );
    const releases = new Batcher<ReturnType<typeof toReleaseRequest>, ReleaseResponse>(
      async (requests, call) => (await rpc.releaseBatch({ requests }, call)).results.map((r) => itemOf(r.result)),
      batchOptions,
    );
    // A call with its own headers (metadata) cannot share a message with others: it goes alone.
    path = { decide: (request, call) => (call.headers ? direct.decide(request, call) : decisions.submit(request, call)) };
    const single = releaseOne;
    releaseOne = (request, call) => (call.headers ? single(request, call) : releases.submit(request, call));
  }
  const leaseOptions = options.leases === undefined || options.leases === false ? undefined : checkLeaseOptions("leases", options.leases);
  const leases = leaseOptions ? new LeaseManager(rpc, leaseOptions) : undefined;

  const remoteCheck = async (message: CheckAndReserveRequest, mode: FailureMode, call: ReturnType<typeof callOf>, signal: AbortSignal | undefined): Promise<CheckResult> => {
    let response: CheckAndReserveResponse;
    try {
      response = await path.decide(message, call);
    } catch (e) {
      const err = toQuotaError(e, signal);
      if (err instanceof QuotaUnavailableError) return unavailableResult(err, mode);
      throw err;
    }
    return fromCheckResponse(response);
  };

  const callOf = (o: CallOptions | undefined, fallbackMs: number) => ({
    timeoutMs: o?.deadlineMs === undefined ? fallbackMs : positiveMs("deadlineMs", o.deadlineMs),
    ...(o?.signal ? { signal: o.signal } : {}),
    ...(o?.headers ? { headers: o.headers } : {}),
  });

  return {
    failureMode,
    async checkAndReserve(request, o) {
      // A leasable call (a key, a product, a method, nothing else) is checked and decided on its lease without
      // building its protobuf message: that message cost a fifth of a local decision's CPU.
      const leased = leases !== undefined && o?.lease !== false && leasable(request);
      let message: CheckAndReserveRequest | undefined;
      if (leased) checkCommon(request);
      else message = toCheckRequest(request);
      const mode = o?.failureMode ?? failureMode;
      checkFailureMode("failureMode", mode);
      const call = callOf(o, deadlineMs);
      if (leases && leased) {
        // What the call is, taken now: the caller may change its request object while this call waits for a lease.
        const ref = { apiKey: request.apiKey ?? "", keyId: request.keyId ?? "", product: request.product, method: request.method };
        const requestMode = request.mode;
        const d = await leases.decide(ref, call);
        if (d.local) return localResult(d.local.held.response, d.local.info);
        if (d.denied) return fromLeaseDenial(d.denied);
        if (d.error !== undefined) {
          if (d.error instanceof QuotaUnavailableError) return unavailableResult(d.error, mode);
          throw d.error;
        }
        // Decided remotely after all (a remote-only key, or no lease to be had): the call as it was when made.
        message = toCheckRequest({ ...(ref.apiKey ? { apiKey: ref.apiKey } : { keyId: ref.keyId }), product: ref.product, method: ref.method, ...(requestMode ? { mode: requestMode } : {}) });
      }
      return remoteCheck(message!, mode, call, o?.signal);
    },
    async release(request, o) {
      const message = toReleaseRequest(request);
      try {
        const r = await releaseOne(message, callOf(o, deadlineMs));
        return {
          state: enumName(ReleaseStateSchema, r.state) as ReleaseState,
          chargedCost: r.chargedCost,
          refundedCost: r.refundedCost,
          chargedSpendMicros: r.chargedSpendMicros,
          overage: r.overage,
          replayed: r.replayed,
        };
      } catch (e) {
        throw toQuotaError(e, o?.signal);
      }
    },
    async topUp(request, o) {
      try {
        return await rpc.topUp(request, callOf(o, controlDeadlineMs));
      } catch (e) {
        throw toQuotaError(e, o?.signal);
      }
    },
    async getLimits(request, o) {
      try {
        return await rpc.getLimits(request, callOf(o, controlDeadlineMs));
      } catch (e) {
        throw toQuotaError(e, o?.signal);
      }
    },
    close() {
      // Without leases the connection ends at once (as before); with leases, once they are settled.
      if (!leases) {
        sessionManager?.abort();
        return Promise.resolve();
      }
      return leases.close(deadlineMs).finally(() => sessionManager?.abort());
    },
  };
}

function parseAddress(address: unknown): string {
  if (typeof address !== "string" || address.trim() === "") throw new QuotaInputError("address", "required: host:port or an http(s):// URL");
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(address) ? address : `http://${address}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    throw new QuotaInputError("address", `not host:port or a URL: ${JSON.stringify(address)}`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") throw new QuotaInputError("address", `scheme must be http or https, got ${url.protocol}`);
  if (!url.port && !/^[a-z][a-z0-9+.-]*:\/\//i.test(address)) throw new QuotaInputError("address", `needs a port: ${JSON.stringify(address)}`);
  return url.toString().replace(/\/$/, "");
}

function positiveMs(field: string, v: unknown): number {
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) throw new QuotaInputError(field, `must be a positive number of milliseconds, got ${String(v)}`);
  return v;
}

function checkFailureMode(field: string, v: unknown): asserts v is FailureMode {
  if (v !== "open" && v !== "closed") throw new QuotaInputError(field, `must be "open" or "closed", got ${JSON.stringify(v)}`);
}

/** A `bigint`, or a `number` that is a safe integer (anything else would silently lose precision). */
export function toInt64(field: string, v: unknown): bigint {
  if (typeof v === "bigint") return v;
  if (typeof v === "number" && Number.isSafeInteger(v)) return BigInt(v);
  throw new QuotaInputError(field, `must be an integer (bigint or safe-integer number), got ${typeof v === "number" ? String(v) : typeof v}`);
}

function toMeters(field: string, meters: unknown): Record<string, bigint> {
  if (meters === undefined) return {};
  if (meters === null || typeof meters !== "object" || Array.isArray(meters)) throw new QuotaInputError(field, "must be an object of meter name -> integer");
  const out: Record<string, bigint> = {};
  for (const [k, v] of Object.entries(meters)) out[k] = toInt64(`${field}.${k}`, v);
  return out;
}

const MODES: Record<Mode, ModeEnum> = { ENFORCE: ModeEnum.ENFORCE, CHECK_ONLY: ModeEnum.CHECK_ONLY, SHADOW: ModeEnum.SHADOW };

/** The checks of the fields every request has: the key, the product, the method, the mode. */
function checkCommon(r: CheckRequest): void {
  if (r === null || typeof r !== "object") throw new QuotaInputError("request", "must be an object");
  // null as absent (JSON callers), as before
  if (r.apiKey != null && typeof r.apiKey !== "string") throw new QuotaInputError("apiKey", "must be a string");
  if (r.keyId != null && typeof r.keyId !== "string") throw new QuotaInputError("keyId", "must be a string");
  const hasKey = typeof r.apiKey === "string" && r.apiKey !== "";
  const hasKeyId = typeof r.keyId === "string" && r.keyId !== "";
  if (hasKey === hasKeyId) throw new QuotaInputError("apiKey", "exactly one of apiKey and keyId is required");
  if (typeof r.product !== "string") throw new QuotaInputError("product", "required (a string)");
  if (typeof r.method !== "string" || r.method === "") throw new QuotaInputError("method", "required (a string)");
  if (r.mode !== undefined && !Object.hasOwn(MODES, r.mode)) throw new QuotaInputError("mode", `must be ENFORCE, CHECK_ONLY or SHADOW, got ${JSON.stringify(r.mode)}`);
}

/** Only fixed-cost ENFORCE calls can be decided on a lease (a lease charges the method's plan weight per call): a
 * request with nothing but what checkCommon checks (no amount, no meter, no idempotency id, no TTL). */
function leasable(r: CheckRequest): boolean {
  return (
    r !== null &&
    typeof r === "object" &&
    r.cost === undefined &&
    r.estimatedSpendMicros === undefined &&
    (r.meters === undefined || isEmptyObject(r.meters)) &&
    (r.idempotencyId == null || r.idempotencyId === "") &&
    r.reservationTtlMs === undefined &&
    (r.mode === undefined || r.mode === "ENFORCE")
  );
}

function isEmptyObject(v: unknown): boolean {
  return v !== null && typeof v === "object" && !Array.isArray(v) && Object.keys(v).length === 0;
}

function toCheckRequest(r: CheckRequest): CheckAndReserveRequest {
  checkCommon(r);
  let ttl: Duration | undefined;
  if (r.reservationTtlMs !== undefined) {
    const ms = r.reservationTtlMs;
    if (typeof ms !== "number" || !Number.isSafeInteger(ms) || ms <= 0) throw new QuotaInputError("reservationTtlMs", `must be a positive integer, got ${String(ms)}`);
    ttl = { $typeName: "google.protobuf.Duration", seconds: BigInt(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1_000_000 };
  }
  return create(CheckAndReserveRequestSchema, {
    apiKey: r.apiKey ?? "",
    keyId: r.keyId ?? "",
    product: r.product,
    method: r.method,
    ...(r.cost !== undefined ? { cost: toInt64("cost", r.cost) } : {}),
    ...(r.estimatedSpendMicros !== undefined ? { estimatedSpendMicros: toInt64("estimatedSpendMicros", r.estimatedSpendMicros) } : {}),
    meters: toMeters("meters", r.meters),
    idempotencyId: r.idempotencyId ?? "",
    ...(ttl ? { reservationTtl: ttl } : {}),
    mode: r.mode ? MODES[r.mode] : ModeEnum.MODE_UNSPECIFIED,
  });
}

function toReleaseRequest(r: ReleaseRequest) {
  if (r === null || typeof r !== "object") throw new QuotaInputError("request", "must be an object");
  if (typeof r.reservationId !== "string" || r.reservationId === "") throw new QuotaInputError("reservationId", "required");
  if (r.outcome !== undefined && r.outcome !== "COMMIT" && r.outcome !== "CANCEL") throw new QuotaInputError("outcome", `must be COMMIT or CANCEL, got ${JSON.stringify(r.outcome)}`);
  return {
    reservationId: r.reservationId,
    outcome: r.outcome === "CANCEL" ? OutcomeEnum.CANCEL : OutcomeEnum.COMMIT,
    ...(r.actualCost !== undefined ? { actualCost: toInt64("actualCost", r.actualCost) } : {}),
    ...(r.actualSpendMicros !== undefined ? { actualSpendMicros: toInt64("actualSpendMicros", r.actualSpendMicros) } : {}),
    actualMeters: toMeters("actualMeters", r.actualMeters),
  };
}

function enumName(schema: { value: Record<number, { name: string } | undefined> }, n: number): string {
  return schema.value[n]?.name ?? String(n);
}

function toMs(d: Duration | undefined): number | undefined {
  if (!d) return undefined;
  return Number(d.seconds) * 1000 + Math.round(d.nanos / 1_000_000);
}

function toDate(t: Timestamp | undefined): Date | undefined {
  if (!t) return undefined;
  return new Date(Number(t.seconds) * 1000 + Math.round(t.nanos / 1_000_000));
}

function fromLimit(l: LimitStatus): LimitState {
  return {
    name: l.name,
    scope: enumName(ScopeSchema, l.scope) as LimitState["scope"],
    kind: enumName(LimitKindSchema, l.kind) as LimitState["kind"],
    unit: l.unit,
    limit: l.limit,
    used: l.used,
    remaining: l.remaining,
    resetsAt: toDate(l.resetsAt),
    windowMs: toMs(l.window),
    overage: l.overage,
    exceeded: l.exceeded,
    product: l.product,
  };
}

function copyLimit(l: LimitState): LimitState {
  return l.resetsAt ? { ...l, resetsAt: new Date(l.resetsAt.getTime()) } : { ...l };
}

function fromCheckResponse(r: CheckAndReserveResponse): CheckResult {
  const common: CheckResultCommon = {
    limits: r.limits.map(fromLimit),
    headers: { ...r.headers },
    retryAfterMs: toMs(r.retryAfter),
    cost: r.cost,
    reservedSpendMicros: r.reservedSpendMicros,
    replayed: r.replayed,
    unavailable: undefined,
  };
  const decision = enumName(DecisionSchema, r.decision);
  if (decision === "ALLOWED") {
    return {
      ...common,
      allowed: true,
      decision: "ALLOWED",
      reason: undefined,
      reservationId: r.reservationId || undefined,
      lease: undefined,
      overage: r.overage,
      failOpen: r.failOpen,
      shadowReason: r.shadowReason ? (enumName(DenyReasonSchema, r.shadowReason) as DenyReason) : undefined,
    };
  }
  return {
    ...common,
    allowed: false,
    decision: "DENIED",
    // A reason this client does not know yet (a newer server) still denies.
    reason: enumName(DenyReasonSchema, r.reason) as DenyReason,
    deniedLimit: r.deniedLimit,
    availableAt: toDate(r.availableAt),
  };
}

function unavailableResult(error: QuotaUnavailableError, mode: FailureMode): CheckResult {
  const common: CheckResultCommon = { limits: [], headers: {}, retryAfterMs: undefined, cost: 0n, reservedSpendMicros: 0n, replayed: false, unavailable: error };
  if (mode === "open") {
    return { ...common, allowed: true, decision: "ALLOWED", reason: undefined, reservationId: undefined, lease: undefined, overage: false, failOpen: true, shadowReason: undefined };
  }
  return { ...common, allowed: false, decision: "DENIED", reason: "UNAVAILABLE", deniedLimit: "", availableAt: undefined };
}

/** A batch item's oneof as the batcher's result. */
function itemOf<R>(r: { case: "response"; value: R } | { case: "error"; value: BatchItemError } | { case: undefined; value?: undefined }): ItemResult<R> {
  if (r.case === "response") return { response: r.value };
  if (r.case === "error") return { error: { code: r.value.code, message: r.value.message, reason: r.value.reason } };
  return { error: { code: 13, message: "batch item without a result", reason: "" } };
}

/** A lease's limits as results report them, converted from the protobuf once per lease; each result gets copies
 * of its own (a shallow copy and its Date: a caller that changes its result changes no other). */
const leaseLimits = new WeakMap<LeaseResponse, LimitState[]>();

/** A call admitted in this process on a lease: no reservation, the limits as the server reported them when it
 * granted the lease (the leased calls already counted as used), no headers (nothing fresh to report). */
function localResult(lease: LeaseResponse, info: LeaseInfo): AllowedResult {
  let limits = leaseLimits.get(lease);
  if (!limits) leaseLimits.set(lease, (limits = lease.limits.map(fromLimit)));
  return {
    limits: limits.map(copyLimit),
    headers: {},
    retryAfterMs: undefined,
    cost: lease.costPerCall,
    reservedSpendMicros: lease.spendPerCallMicros,
    replayed: false,
    unavailable: undefined,
    allowed: true,
    decision: "ALLOWED",
    reason: undefined,
    reservationId: undefined,
    lease: info,
    overage: false,
    failOpen: false,
    shadowReason: undefined,
  };
}

/** The server could grant no call: a denial as CheckAndReserve would answer it. */
function fromLeaseDenial(r: LeaseResponse): DeniedResult {
  const reason = (r.reason ? enumName(DenyReasonSchema, r.reason) : "QUOTA_EXHAUSTED") as DenyReason;
  const limits = r.limits.map(fromLimit);
  return {
    limits,
    headers: {},
    retryAfterMs: toMs(r.retryAfter),
    cost: 0n,
    reservedSpendMicros: 0n,
    replayed: false,
    unavailable: undefined,
    allowed: false,
    decision: "DENIED",
    reason,
    deniedLimit: limits.find((l) => l.exceeded)?.name ?? "",
    availableAt: undefined,
  };
}
