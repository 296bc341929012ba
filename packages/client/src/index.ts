/**
 * @quota-authority/client: a typed client for quota-authority's data plane. Middleware: `@quota-authority/client/express`,
 * `/fastify`, `/hono`.
 */
export {
  createQuotaClient,
  type AllowedResult,
  type Amount,
  type CallOptions,
  type CheckOptions,
  type CheckRequest,
  type CheckResult,
  type Decision,
  type DeniedResult,
  type DenyReason,
  type FailureMode,
  type GetLimitsRequest,
  type LimitState,
  type Mode,
  type Outcome,
  type QuotaClient,
  type QuotaClientOptions,
  type ReleaseRequest,
  type ReleaseResult,
  type ReleaseState,
  type TopUpRequest,
  type TransportKind,
} from "./client.ts";
export type { BatchingOptions } from "./batching.ts";
export type { LeaseInfo, LeaseOptions } from "./leases.ts";
export { QuotaCanceledError, QuotaError, QuotaInputError, QuotaRequestError, QuotaUnavailableError, type UnavailableKind } from "./errors.ts";
export { statusFor, type Denial, type DenialReason, type ErrorPhase, type QuotaMiddlewareOptions } from "./middleware/core.ts";
/** The generated messages of QuotaService (for `topUp` / `getLimits` shapes and their enums). */
export * as proto from "./gen/quota/v1/quota_pb.ts";
export * as protoTypes from "./gen/quota/v1/types_pb.ts";
