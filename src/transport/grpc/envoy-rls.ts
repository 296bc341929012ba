/**
 * Adapter for Envoy's global rate-limit service (`envoy.service.ratelimit.v3.RateLimitService`), served on the gRPC
 * port: authenticates the caller like every data-plane call (service token or mTLS), translates the Envoy messages
 * to the core's EnvoyRateLimit use case and back. No rule lives here (src/core/envoy-rate-limit.ts, docs/envoy.md).
 */
import { create } from "@bufbuild/protobuf";
import type { EnvoyRateLimit, RlsAnswer, RlsUnit } from "../../core/envoy-rate-limit.ts";
import {
  RateLimitResponseSchema,
  RateLimitResponse_Code,
  RateLimitResponse_RateLimit_Unit,
  type RateLimitRequest,
  type RateLimitResponse,
} from "../../gen/envoy/service/ratelimit/v3/rls_pb.ts";
import { authenticateDataPlane, type AuthConfig, type CallContext } from "../api.ts";

export interface EnvoyRlsApi {
  shouldRateLimit(req: RateLimitRequest, ctx: CallContext): Promise<RateLimitResponse>;
}

const CODE = { OK: RateLimitResponse_Code.OK, OVER_LIMIT: RateLimitResponse_Code.OVER_LIMIT } as const;
const UNIT: Record<RlsUnit, RateLimitResponse_RateLimit_Unit> = {
  UNKNOWN: RateLimitResponse_RateLimit_Unit.UNKNOWN,
  SECOND: RateLimitResponse_RateLimit_Unit.SECOND,
  MINUTE: RateLimitResponse_RateLimit_Unit.MINUTE,
  HOUR: RateLimitResponse_RateLimit_Unit.HOUR,
  DAY: RateLimitResponse_RateLimit_Unit.DAY,
  WEEK: RateLimitResponse_RateLimit_Unit.WEEK,
  MONTH: RateLimitResponse_RateLimit_Unit.MONTH,
};

function toWire(a: RlsAnswer): RateLimitResponse {
  return create(RateLimitResponseSchema, {
    overallCode: CODE[a.code],
    statuses: a.statuses.map((s) => ({
      code: CODE[s.code],
      limitRemaining: s.remaining,
      ...(s.limit ? { currentLimit: { name: s.limit.name, requestsPerUnit: s.limit.requestsPerUnit, unit: UNIT[s.limit.unit] } } : {}),
      ...(s.resetSeconds !== undefined ? { durationUntilReset: { seconds: BigInt(s.resetSeconds), nanos: 0 } } : {}),
    })),
    responseHeadersToAdd: a.headers.map(([key, value]) => ({ key, value })),
    ...(a.body !== undefined ? { rawBody: new TextEncoder().encode(a.body) } : {}),
    dynamicMetadata: a.metadata,
  });
}

export function createEnvoyRlsApi(deps: { rateLimit: EnvoyRateLimit; auth: AuthConfig }): EnvoyRlsApi {
  return {
    async shouldRateLimit(req, ctx) {
      authenticateDataPlane(deps.auth, "ShouldRateLimit", ctx);
      const a = await deps.rateLimit.shouldRateLimit({
        domain: req.domain,
        hitsAddend: req.hitsAddend,
        descriptors: req.descriptors.map((d) => ({
          entries: d.entries.map((e) => ({ key: e.key, value: e.value })),
          ...(d.hitsAddend !== undefined ? { hitsAddend: d.hitsAddend } : {}),
        })),
      });
      return toWire(a);
    },
  };
}
