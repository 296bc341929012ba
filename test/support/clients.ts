/**
 * Real clients for the tests: @grpc/grpc-js on the gRPC port, and @connectrpc/connect-node (Connect over HTTP/1.1,
 * gRPC-Web, gRPC over h2c) on the HTTP port. All expose the same promise-returning shape.
 */
import * as grpc from "@grpc/grpc-js";
import * as http from "node:http";
import { create, fromBinary, toBinary, type DescMessage, type DescService, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import { ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { QuotaAdminService } from "../../src/gen/quota/v1/admin_pb.ts";
import { QuotaService } from "../../src/gen/quota/v1/quota_pb.ts";

type Methods<S extends GenServiceMethods> = {
  [K in keyof S]: (
    req: MessageInitShape<S[K]["input"]>,
    headers?: Record<string, string>,
  ) => Promise<MessageShape<S[K]["output"]>>;
};

export type QuotaClient = Methods<typeof QuotaService extends GenService<infer S> ? S : never>;
export type AdminClient = Methods<typeof QuotaAdminService extends GenService<infer S> ? S : never>;

export type Protocol = "grpc-js" | "connect" | "grpc-web" | "grpc";

/** A gRPC error code (number) from either client library's error, or undefined. */
export function codeOf(e: unknown): number | undefined {
  if (e instanceof ConnectError) return e.code;
  const c = (e as { code?: unknown })?.code;
  return typeof c === "number" ? c : undefined;
}

/** The `x-error-reason` an error carries (gRPC trailing metadata, or the Connect error's headers), or "". */
export function reasonOf(e: unknown): string {
  if (e instanceof ConnectError) return e.metadata.get("x-error-reason") ?? "";
  const md = (e as { metadata?: grpc.Metadata })?.metadata;
  const v = md instanceof grpc.Metadata ? md.get("x-error-reason")[0] : undefined;
  return v === undefined ? "" : String(v);
}

export function messageOf(e: unknown): string {
  if (e instanceof ConnectError) return e.rawMessage;
  return String((e as { details?: string })?.details ?? (e as Error)?.message ?? e);
}

/** Client-side deadline of every call (a hanging call fails the test instead of the runner). */
const DEFAULT_CALL_TIMEOUT_MS = 15_000;

function grpcJsClient<S extends GenServiceMethods>(service: GenService<S>, address: string, credentials?: grpc.ChannelCredentials, timeoutMs = DEFAULT_CALL_TIMEOUT_MS): { client: Methods<S>; close: () => void } {
  const def: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  const desc = service as unknown as DescService;
  for (const m of desc.methods) {
    def[m.localName] = {
      path: `/${desc.typeName}/${m.name}`,
      requestStream: false,
      responseStream: false,
      requestSerialize: (msg: unknown) => Buffer.from(toBinary(m.input as DescMessage, msg as never)),
      requestDeserialize: (b: Buffer) => fromBinary(m.input as DescMessage, b),
      responseSerialize: (msg: unknown) => Buffer.from(toBinary(m.output as DescMessage, msg as never)),
      responseDeserialize: (b: Buffer) => fromBinary(m.output as DescMessage, b),
    };
  }
  const Ctor = grpc.makeGenericClientConstructor(def as grpc.ServiceDefinition, desc.typeName);
  const raw = new Ctor(address, credentials ?? grpc.credentials.createInsecure()) as unknown as Record<string, Function>;
  const client: Record<string, unknown> = {};
  for (const m of desc.methods) {
    client[m.localName] = (req: object, headers: Record<string, string> = {}) =>
      new Promise((resolve, reject) => {
        const md = new grpc.Metadata();
        for (const [k, v] of Object.entries(headers)) md.set(k, v);
        raw[m.localName]!.call(raw, create(m.input as DescMessage, req as never), md, { deadline: Date.now() + timeoutMs }, (err: unknown, res: unknown) => (err ? reject(err) : resolve(res)));
      });
  }
  return { client: client as Methods<S>, close: () => (raw as unknown as grpc.Client).close() };
}

/**
 * HTTP/1.1 clients here open a connection per call: Node's global agent keeps idle sockets for 5 s, the server keeps
 * idle keep-alive connections for 5 s too, and a request sent on a socket the server is closing at that moment fails
 * (ABORTED) — a client retry concern that these tests do not measure (keep-alive behaviour has its own tests with
 * raw sockets: connections.test.ts, sigterm.test.ts).
 */
const NO_KEEP_ALIVE = { agent: new http.Agent({ keepAlive: false }) };

function connectClient<S extends GenServiceMethods>(service: GenService<S>, baseUrl: string, protocol: Exclude<Protocol, "grpc-js">, timeoutMs = DEFAULT_CALL_TIMEOUT_MS): Methods<S> {
  const transport =
    protocol === "connect"
      ? createConnectTransport({ baseUrl, httpVersion: "1.1", nodeOptions: NO_KEEP_ALIVE })
      : protocol === "grpc-web"
        ? createGrpcWebTransport({ baseUrl, httpVersion: "1.1", nodeOptions: NO_KEEP_ALIVE })
        : createGrpcTransport({ baseUrl });
  const c = createClient(service, transport) as unknown as Client<GenService<S>> & Record<string, Function>;
  const out: Record<string, unknown> = {};
  for (const m of (service as unknown as DescService).methods) {
    out[m.localName] = (req: object, headers: Record<string, string> = {}) => (c[m.localName] as (r: unknown, o: unknown) => Promise<unknown>)(req, { headers, timeoutMs });
  }
  return out as Methods<S>;
}

export interface Clients {
  quota: QuotaClient;
  admin: AdminClient;
  close(): void;
}

export function clients(protocol: Protocol, ports: { grpc: number; http: number }, credentials?: grpc.ChannelCredentials, host = "127.0.0.1", timeoutMs = DEFAULT_CALL_TIMEOUT_MS): Clients {
  if (protocol === "grpc-js") {
    const q = grpcJsClient(QuotaService, `${host}:${ports.grpc}`, credentials, timeoutMs);
    const a = grpcJsClient(QuotaAdminService, `${host}:${ports.grpc}`, credentials, timeoutMs);
    return { quota: q.client as QuotaClient, admin: a.client as AdminClient, close: () => (q.close(), a.close()) };
  }
  const base = `http://${host}:${ports.http}`;
  return {
    quota: connectClient(QuotaService, base, protocol, timeoutMs) as QuotaClient,
    admin: connectClient(QuotaAdminService, base, protocol, timeoutMs) as AdminClient,
    close: () => {},
  };
}

export const ADMIN = { authorization: "Bearer test-admin-token" };
