/**
 * A real @grpc/grpc-js client for Envoy's rate-limit service, and builders for the descriptor shapes Envoy's route
 * actions produce (api/envoy/config/route/v3/route_components.proto, RateLimit.Action):
 * - request_headers { header_name, descriptor_key }         -> (descriptor_key, <header value>)
 * - generic_key { descriptor_value[, descriptor_key] }       -> ("generic_key" | descriptor_key, descriptor_value)
 * - remote_address {}                                        -> ("remote_address", <client ip>)
 * - header_value_match { descriptor_value[, descriptor_key] } -> ("header_match" | descriptor_key, descriptor_value)
 */
import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  RateLimitRequestSchema,
  RateLimitResponseSchema,
  RateLimitService,
  type RateLimitResponse,
} from "../../src/gen/envoy/service/ratelimit/v3/rls_pb.ts";

interface Entry {
  key: string;
  value: string;
}
/** A RateLimitRequest as plain data (converted with `create` when sent). */
export interface RlsRequestInit {
  domain: string;
  hitsAddend?: number;
  descriptors: Array<{ entries: Entry[]; hitsAddend?: bigint }>;
}

export const requestHeaders = (descriptorKey: string, value: string): Entry => ({ key: descriptorKey, value });
export const genericKey = (value: string, descriptorKey = "generic_key"): Entry => ({ key: descriptorKey, value });
export const remoteAddress = (ip: string): Entry => ({ key: "remote_address", value: ip });
export const headerValueMatch = (value: string, descriptorKey = "header_match"): Entry => ({ key: descriptorKey, value });

export interface RlsClient {
  shouldRateLimit(req: RlsRequestInit, headers?: Record<string, string>): Promise<RateLimitResponse>;
  /** Sends `bytes` as the request message, unchecked (malformed input). */
  raw(bytes: Buffer, headers?: Record<string, string>): Promise<RateLimitResponse>;
  close(): void;
}

export function rlsClient(port: number, credentials = grpc.credentials.createInsecure()): RlsClient {
  const method = RateLimitService.method.shouldRateLimit;
  const path = `/${RateLimitService.typeName}/${method.name}`;
  const client = new grpc.Client(`127.0.0.1:${port}`, credentials);
  const send = (bytes: Buffer, headers: Record<string, string>) =>
    new Promise<RateLimitResponse>((resolve, reject) => {
      const md = new grpc.Metadata();
      for (const [k, v] of Object.entries(headers)) md.set(k, v);
      client.makeUnaryRequest(
        path,
        (b: Buffer) => b,
        (b: Buffer) => fromBinary(RateLimitResponseSchema, b),
        bytes,
        md,
        { deadline: Date.now() + 15_000 },
        (err, res) => (err ? reject(err) : resolve(res!)),
      );
    });
  return {
    shouldRateLimit: (req, headers = {}) => send(Buffer.from(toBinary(RateLimitRequestSchema, create(RateLimitRequestSchema, req as never))), headers),
    raw: (bytes, headers = {}) => send(bytes, headers),
    close: () => client.close(),
  };
}

/** The JSON Envoy would send to the downstream client, and the dynamic metadata, decoded. */
export function bodyOf(r: RateLimitResponse): unknown {
  return r.rawBody.length ? JSON.parse(new TextDecoder().decode(r.rawBody)) : undefined;
}

export function headersOf(r: RateLimitResponse): Record<string, string> {
  return Object.fromEntries(r.responseHeadersToAdd.map((h) => [h.key, h.value]));
}
