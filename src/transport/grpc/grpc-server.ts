/**
 * The gRPC port (@grpc/grpc-js): the per-request path for backends. Serves QuotaService and QuotaAdminService from
 * the protobuf-es descriptors, plus grpc.health.v1 and server reflection (grpcurl / `buf curl` can list and call).
 *
 * Requests are decoded inside the handler (not by grpc-js) so malformed bytes answer INVALID_ARGUMENT, not INTERNAL.
 */
import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary, type DescMessage, type DescService } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import type { DescFile } from "@bufbuild/protobuf";
import { HealthImplementation } from "grpc-health-check";
import { ReflectionService } from "@grpc/reflection";
import { QuotaAdminService, file_quota_v1_admin } from "../../gen/quota/v1/admin_pb.ts";
import { CheckAndReserveRequestSchema, CheckAndReserveResponseSchema, QuotaService, file_quota_v1_quota, type CheckAndReserveResponse } from "../../gen/quota/v1/quota_pb.ts";
import { RateLimitService, file_envoy_service_ratelimit_v3_rls } from "../../gen/envoy/service/ratelimit/v3/rls_pb.ts";
import { InvalidArgumentError } from "../../core/errors.ts";
import type { Api, CallContext } from "../api.ts";
import { mapError } from "../errors.ts";
import type { EnvoyRlsApi } from "./envoy-rls.ts";
import { decodeCheckAndReserveRequest } from "./check-request-wire.ts";
import { encodeCheckAndReserveResponse } from "./check-response-wire.ts";

export interface GrpcServerOptions {
  api: Api;
  /** Envoy's rate-limit service (envoy.service.ratelimit.v3.RateLimitService), served beside QuotaService. */
  envoy?: EnvoyRlsApi;
  host: string;
  port: number;
  maxMessageBytes: number;
  /** TLS: key/cert (PEM) and, for mTLS, the CA that signs client certificates. */
  tls?: { key: Buffer; cert: Buffer; clientCa?: Buffer; requireClientCert: boolean };
  /** A connection with no call in flight is closed after this (ms); this also closes connections that send nothing. */
  idleTimeoutMs?: number;
  /** HTTP/2 streams (calls) per connection. */
  maxConcurrentStreams?: number;
  onError?: (method: string, err: unknown) => void;
  /** Counts calls for metrics: method, status code name, seconds. */
  onCall?: (method: string, code: string, seconds: number) => void;
}

export interface RunningGrpcServer {
  port: number;
  health: HealthImplementation;
  /** Stops accepting, lets in-flight calls finish (up to `graceMs`), then forces. */
  shutdown(graceMs: number): Promise<void>;
}

type Handler = (req: never, ctx: CallContext) => Promise<unknown>;

/** grpc/health/v1/health.proto (the standard health service served by grpc-health-check), for reflection. */
const HEALTH_PROTO = create(FileDescriptorProtoSchema, {
  name: "grpc/health/v1/health.proto",
  package: "grpc.health.v1",
  syntax: "proto3",
  messageType: [
    { name: "HealthCheckRequest", field: [{ name: "service", number: 1, label: 1, type: 9, jsonName: "service" }] },
    {
      name: "HealthCheckResponse",
      field: [{ name: "status", number: 1, label: 1, type: 14, typeName: ".grpc.health.v1.HealthCheckResponse.ServingStatus", jsonName: "status" }],
      enumType: [{ name: "ServingStatus", value: [{ name: "UNKNOWN", number: 0 }, { name: "SERVING", number: 1 }, { name: "NOT_SERVING", number: 2 }, { name: "SERVICE_UNKNOWN", number: 3 }] }],
    },
  ],
  service: [
    {
      name: "Health",
      method: [
        { name: "Check", inputType: ".grpc.health.v1.HealthCheckRequest", outputType: ".grpc.health.v1.HealthCheckResponse" },
        { name: "Watch", inputType: ".grpc.health.v1.HealthCheckRequest", outputType: ".grpc.health.v1.HealthCheckResponse", serverStreaming: true },
      ],
    },
  ],
  options: { javaMultipleFiles: true, javaOuterClassname: "HealthProto", javaPackage: "io.grpc.health.v1", goPackage: "google.golang.org/grpc/health/grpc_health_v1", csharpNamespace: "Grpc.Health.V1" },
});

function allFiles(files: DescFile[]): DescFile[] {
  const seen = new Map<string, DescFile>();
  const visit = (f: DescFile) => {
    if (seen.has(f.name)) return;
    for (const d of f.dependencies) visit(d);
    seen.set(f.name, f);
  };
  files.forEach(visit);
  return [...seen.values()];
}

/** Bytes as a Buffer without copying them (toBinary's array is ours alone). */
const asBuffer = (b: Uint8Array): Buffer => (Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength));

/** The hot path's answer has a dedicated encoder (same bytes, a fraction of the CPU); every other message toBinary. */
function serializerFor(output: DescMessage): (msg: unknown) => Buffer {
  if (output.typeName === CheckAndReserveResponseSchema.typeName) return (msg) => asBuffer(encodeCheckAndReserveResponse(msg as CheckAndReserveResponse));
  return (msg) => asBuffer(toBinary(output, msg as never));
}

/** The hot path's request has a dedicated decoder too (the same message); every other message fromBinary. */
function deserializerFor(input: DescMessage): (bytes: Buffer) => unknown {
  if (input.typeName === CheckAndReserveRequestSchema.typeName) return decodeCheckAndReserveRequest;
  return (bytes) => fromBinary(input, bytes);
}

function service(desc: DescService, impl: Record<string, Handler>, opts: GrpcServerOptions): [grpc.ServiceDefinition, grpc.UntypedServiceImplementation] {
  const definition: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  const implementation: grpc.UntypedServiceImplementation = {};
  for (const m of desc.methods) {
    const input = m.input as DescMessage;
    const output = m.output as DescMessage;
    definition[m.localName] = {
      path: `/${desc.typeName}/${m.name}`,
      requestStream: false,
      responseStream: false,
      originalName: m.localName,
      requestSerialize: (msg: unknown) => Buffer.from(toBinary(input, msg as never)),
      requestDeserialize: (buf: Buffer) => buf,
      responseSerialize: serializerFor(output),
      responseDeserialize: (buf: Buffer) => fromBinary(output, buf),
    };
    const handler = impl[m.localName]!;
    const decode = deserializerFor(input);
    implementation[m.localName] = (call: grpc.ServerUnaryCall<Buffer, unknown>, callback: grpc.sendUnaryData<unknown>) => {
      const started = process.hrtime.bigint();
      const finish = (code: string) => opts.onCall?.(m.name, code, Number(process.hrtime.bigint() - started) / 1e9);
      let request: unknown;
      try {
        request = decode(call.request);
      } catch (e) {
        const err = new InvalidArgumentError("request", `not a valid ${input.typeName}: ${(e as Error).message}`);
        finish("INVALID_ARGUMENT");
        callback({ code: grpc.status.INVALID_ARGUMENT, details: err.message });
        return;
      }
      const md = call.metadata;
      const peerCert = (call as unknown as { getAuthContext?: () => { sslPeerCertificate?: unknown } }).getAuthContext?.()?.sslPeerCertificate;
      const ctx: CallContext = {
        header: (name) => {
          const v = md.get(name)[0];
          return v === undefined ? undefined : String(v);
        },
        peerVerified: Boolean(opts.tls?.requireClientCert && peerCert),
      };
      (handler as (r: unknown, c: CallContext) => Promise<unknown>)(request, ctx).then(
        (res) => {
          finish("OK");
          callback(null, res);
        },
        (e: unknown) => {
          const mapped = mapError(e);
          if (mapped.cause !== undefined) opts.onError?.(m.name, mapped.cause);
          finish(mapped.code);
          const meta = new grpc.Metadata();
          meta.set("x-error-reason", mapped.reason);
          callback({ code: mapped.grpc, details: mapped.message, metadata: meta });
        },
      );
    };
  }
  return [definition as grpc.ServiceDefinition, implementation];
}

export async function startGrpcServer(opts: GrpcServerOptions): Promise<RunningGrpcServer> {
  const server = new grpc.Server({
    "grpc.max_receive_message_length": opts.maxMessageBytes,
    "grpc.max_send_message_length": 16 * 1024 * 1024,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.max_connection_idle_ms": opts.idleTimeoutMs ?? 120_000,
    "grpc.max_concurrent_streams": opts.maxConcurrentStreams ?? 1_000,
  });
  const q = opts.api.quota as unknown as Record<string, Handler>;
  const a = opts.api.admin as unknown as Record<string, Handler>;
  server.addService(...service(QuotaService, q, opts));
  server.addService(...service(QuotaAdminService, a, opts));
  if (opts.envoy) server.addService(...service(RateLimitService, opts.envoy as unknown as Record<string, Handler>, opts));

  const health = new HealthImplementation({
    "": "SERVING",
    [QuotaService.typeName]: "SERVING",
    [QuotaAdminService.typeName]: "SERVING",
    ...(opts.envoy ? { [RateLimitService.typeName]: "SERVING" as const } : {}),
  });
  health.addToServer(server);
  const files = allFiles([file_quota_v1_quota, file_quota_v1_admin, ...(opts.envoy ? [file_envoy_service_ratelimit_v3_rls] : [])]);
  new ReflectionService({
    "quota.v1": { fileDescriptorProtos: files.map((f) => Buffer.from(toBinary(FileDescriptorProtoSchema, f.proto))) },
    // grpc.health.v1 too: `grpcurl ... grpc.health.v1.Health/Check` (what operators type first) needs its descriptor.
    "grpc.health.v1": { fileDescriptorProtos: [Buffer.from(toBinary(FileDescriptorProtoSchema, HEALTH_PROTO))] },
  } as never).addToServer(server);

  const credentials = opts.tls
    ? grpc.ServerCredentials.createSsl(opts.tls.clientCa ?? null, [{ private_key: opts.tls.key, cert_chain: opts.tls.cert }], opts.tls.requireClientCert)
    : grpc.ServerCredentials.createInsecure();
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(`${opts.host}:${opts.port}`, credentials, (err, p) => (err ? reject(err) : resolve(p)));
  });
  return {
    port,
    health,
    shutdown: (graceMs) =>
      new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, graceMs);
        server.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
      }),
  };
}
