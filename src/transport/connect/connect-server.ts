/**
 * The HTTP port (@connectrpc/connect-node): Connect, gRPC-Web and gRPC for browsers, curl and any HTTP client, over
 * HTTP/1.1 and cleartext HTTP/2 on one port. Node's http2 `allowHTTP1` works only with TLS, so a plain `net` server
 * peeks at each connection's first bytes: the HTTP/2 preface ("PRI * HTTP/2.0") goes to the h2c server, anything
 * else to the HTTP/1.1 server. Also serves /healthz, /readyz and /metrics, and CORS for allow-listed origins.
 */
import * as http from "node:http";
import * as http2 from "node:http2";
import * as net from "node:net";
import { fromBinary, type DescMessage } from "@bufbuild/protobuf";
import { ConnectError, createContextKey, createContextValues, type ConnectRouter, type HandlerContext } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { cors as connectCors } from "@connectrpc/connect";
import { QuotaAdminService } from "../../gen/quota/v1/admin_pb.ts";
import { QuotaService } from "../../gen/quota/v1/quota_pb.ts";
import { BROWSER_METHODS, type Api, type CallContext } from "../api.ts";
import { mapError } from "../errors.ts";
import type { StaticSite } from "./static-site.ts";

export interface ConnectServerOptions {
  api: Api;
  host: string;
  port: number;
  maxMessageBytes: number;
  allowedOrigins: readonly string[];
  /** TLS for HTTPS (HTTP/1.1 and h2 via ALPN). */
  tls?: { key: Buffer; cert: Buffer; clientCa?: Buffer; requireClientCert: boolean };
  health: () => { live: boolean; ready: boolean };
  /** A new connection's first bytes and every request's headers must arrive within this (ms). */
  headersTimeoutMs?: number;
  /** A connection with nothing in flight is closed after this (ms). */
  idleTimeoutMs?: number;
  /** HTTP/2 streams per connection. */
  maxConcurrentStreams?: number;
  metrics: () => Promise<{ contentType: string; body: string }>;
  onError?: (method: string, err: unknown) => void;
  onCall?: (method: string, code: string, seconds: number) => void;
  /** The dashboard's static files (GET/HEAD under its mount path); absent = API only. */
  site?: StaticSite;
}

export interface RunningConnectServer {
  port: number;
  shutdown(graceMs: number): Promise<void>;
}

/** Paths a browser may call (CORS is answered only for these); the policy itself lives in api.ts. */
const BROWSER_PATHS = new Set([...BROWSER_METHODS].map((m) => `/${QuotaService.typeName}/${m}`));

/** Whether the TLS layer verified the peer's client certificate (mTLS), set per request from its socket. */
const PEER_VERIFIED = createContextKey(false, { description: "client certificate verified" });

/** Input schema of every method, by path. */
const INPUTS = new Map<string, DescMessage>(
  [QuotaService, QuotaAdminService].flatMap((svc) => svc.methods.map((m) => [`/${svc.typeName}/${m.name}`, m.input as DescMessage] as const)),
);

type BinaryProtocol = "connect" | "grpc-web" | "grpc";

function binaryProtocolOf(contentType: string | undefined): BinaryProtocol | undefined {
  const ct = (contentType ?? "").split(";")[0]!.trim().toLowerCase();
  if (ct === "application/proto") return "connect";
  if (ct === "application/grpc-web" || ct === "application/grpc-web+proto") return "grpc-web";
  if (ct === "application/grpc" || ct === "application/grpc+proto") return "grpc";
  return undefined;
}

/** Writes an error the way each protocol expects (Connect: JSON body; gRPC-Web and gRPC: trailers-only). */
function writeProtocolError(res: http.ServerResponse, protocol: BinaryProtocol, code: "invalid_argument" | "resource_exhausted", message: string): void {
  if (protocol === "connect") {
    res.writeHead(code === "invalid_argument" ? 400 : 429, { "content-type": "application/json" });
    res.end(JSON.stringify({ code, message }));
    return;
  }
  res.writeHead(200, {
    "content-type": protocol === "grpc" ? "application/grpc+proto" : "application/grpc-web+proto",
    "grpc-status": code === "invalid_argument" ? "3" : "8",
    "grpc-message": encodeURIComponent(message),
  });
  res.end();
}

/**
 * connect-node answers a binary message it cannot parse with INTERNAL; a malformed request is the caller's
 * problem, so binary bodies are decoded here first and answered INVALID_ARGUMENT naming the message type. Bodies
 * that decode are handed on unchanged (the adapter reads them from the request's async iterator).
 */
async function precheckBinary(req: http.IncomingMessage, res: http.ServerResponse, maxBytes: number): Promise<boolean> {
  const input = INPUTS.get((req.url ?? "").split("?")[0]!);
  const protocol = binaryProtocolOf(req.headers["content-type"]);
  if (req.method !== "POST" || !input || !protocol) return true;
  const encoding = req.headers[protocol === "connect" ? "content-encoding" : "grpc-encoding"];
  if (encoding && encoding !== "identity") return true; // compressed: the adapter decompresses and limits it
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > maxBytes + 5) {
      writeProtocolError(res, protocol, "resource_exhausted", `message is larger than ${maxBytes} bytes`);
      return false;
    }
    chunks.push(chunk);
  }
  const body = Buffer.concat(chunks);
  let message: Uint8Array = body;
  if (protocol !== "connect") {
    // Length-prefixed frames: flag byte, 4-byte length, message. Only the first (unary) frame is checked.
    if (body.length >= 5 && (body[0]! & 1) === 0) message = body.subarray(5, 5 + body.readUInt32BE(1));
    else message = new Uint8Array();
  }
  try {
    fromBinary(input, message);
  } catch (e) {
    writeProtocolError(res, protocol, "invalid_argument", `request: not a valid ${input.typeName}: ${(e as Error).message}`);
    return false;
  }
  Object.defineProperty(req, Symbol.asyncIterator, {
    value: async function* () {
      yield body;
    },
  });
  return true;
}

function wrap(impl: object, opts: ConnectServerOptions): never {
  const out: Record<string, unknown> = {};
  for (const [name, fn] of Object.entries(impl)) {
    out[name] = async (req: unknown, hctx: HandlerContext) => {
      const started = process.hrtime.bigint();
      const ctx: CallContext = {
        header: (h) => hctx.requestHeader.get(h) ?? undefined,
        peerVerified: Boolean(opts.tls?.requireClientCert) && hctx.values.get(PEER_VERIFIED),
      };
      try {
        const res = await (fn as (r: unknown, c: CallContext) => Promise<unknown>)(req, ctx);
        opts.onCall?.(hctx.method.name, "OK", Number(process.hrtime.bigint() - started) / 1e9);
        return res;
      } catch (e) {
        const m = mapError(e);
        if (m.cause !== undefined) opts.onError?.(hctx.method.name, m.cause);
        opts.onCall?.(hctx.method.name, m.code, Number(process.hrtime.bigint() - started) / 1e9);
        hctx.responseHeader.set("x-error-reason", m.reason);
        throw new ConnectError(m.message, m.connect);
      }
    };
  }
  return out as never;
}

export async function startConnectServer(opts: ConnectServerOptions): Promise<RunningConnectServer> {
  const routes = (router: ConnectRouter) => {
    router.service(QuotaService, wrap(opts.api.quota, opts));
    router.service(QuotaAdminService, wrap(opts.api.admin, opts));
  };
  const adapter = connectNodeAdapter({
    routes,
    readMaxBytes: opts.maxMessageBytes,
    contextValues: (req) => createContextValues().set(PEER_VERIFIED, (req.socket as { authorized?: boolean }).authorized === true),
    // Message decoding errors are the caller's fault: INVALID_ARGUMENT naming the problem.
    jsonOptions: { ignoreUnknownFields: false },
  });

  const allowHeaders = [...connectCors.allowedHeaders, "Authorization"].join(", ");
  const exposeHeaders = [...connectCors.exposedHeaders, "x-error-reason"].join(", ");
  let closing = false;
  const handler = (req: http.IncomingMessage, res: http.ServerResponse) => {
    // Draining: answer, then close the HTTP/1.1 connection (a keep-alive client must reconnect elsewhere).
    if (closing && req.httpVersionMajor < 2) res.setHeader("connection", "close");
    const url = req.url ?? "/";
    if (req.method === "GET" && (url === "/healthz" || url === "/readyz")) {
      const h = opts.health();
      const ok = url === "/healthz" ? h.live : h.ready;
      res.writeHead(ok ? 200 : 503, { "content-type": "text/plain" });
      res.end(ok ? "ok\n" : "not ready\n");
      return;
    }
    if (req.method === "GET" && url === "/metrics") {
      opts.metrics().then(
        (m) => {
          res.writeHead(200, { "content-type": m.contentType });
          res.end(m.body);
        },
        () => {
          res.writeHead(500);
          res.end();
        },
      );
      return;
    }
    if (opts.site?.(req, res)) return;
    const origin = req.headers.origin;
    if (typeof origin === "string") {
      const path = url.split("?")[0]!;
      const allowed = (opts.allowedOrigins.includes(origin) || opts.allowedOrigins.includes("*")) && BROWSER_PATHS.has(path);
      if (req.method === "OPTIONS") {
        if (!allowed) {
          res.writeHead(403, { "content-type": "text/plain" });
          res.end("origin or path not allowed\n");
          return;
        }
        res.writeHead(204, {
          "access-control-allow-origin": origin,
          "access-control-allow-methods": connectCors.allowedMethods.join(", "),
          "access-control-allow-headers": allowHeaders,
          "access-control-max-age": "7200",
          vary: "Origin",
        });
        res.end();
        return;
      }
      if (allowed) {
        res.setHeader("access-control-allow-origin", origin);
        res.setHeader("access-control-expose-headers", exposeHeaders);
        res.setHeader("vary", "Origin");
      }
    }
    precheckBinary(req, res, opts.maxMessageBytes).then(
      (pass) => {
        if (pass) (adapter as (a: typeof req, b: typeof res) => void)(req, res);
      },
      () => {
        if (!res.headersSent) res.writeHead(400);
        res.end();
      },
    );
  };

  let listener: net.Server;
  const headersTimeout = opts.headersTimeoutMs ?? 10_000;
  const idleTimeout = opts.idleTimeoutMs ?? 120_000;
  const settings = { maxConcurrentStreams: opts.maxConcurrentStreams ?? 1_000 };
  // connectionsCheckingInterval: how often Node enforces headersTimeout/requestTimeout (default every 30 s).
  const h1 = http.createServer(
    { headersTimeout, requestTimeout: Math.max(headersTimeout, 30_000), keepAliveTimeout: Math.min(5_000, idleTimeout), connectionsCheckingInterval: Math.min(1_000, headersTimeout) },
    handler as http.RequestListener,
  );
  const h2 = http2.createServer({ settings }, handler as never);
  if (opts.tls) {
    listener = http2.createSecureServer(
      { key: opts.tls.key, cert: opts.tls.cert, allowHTTP1: true, settings, ...(opts.tls.clientCa ? { ca: opts.tls.clientCa } : {}), requestCert: opts.tls.requireClientCert, rejectUnauthorized: opts.tls.requireClientCert },
      handler as never,
    ) as unknown as net.Server;
  } else {
    const PREFACE = Buffer.from("PRI * HTTP/2.0");
    listener = net.createServer((socket) => {
      // A connection that sends nothing (or too little to tell the protocol) is closed: it would be held for ever.
      socket.setTimeout(headersTimeout, () => socket.destroy());
      socket.once("readable", function route() {
        const head: Buffer | null = socket.read(PREFACE.length) ?? socket.read();
        if (head === null) {
          socket.once("readable", route);
          return;
        }
        socket.setTimeout(0);
        socket.unshift(head);
        if (head.length >= 3 && PREFACE.subarray(0, Math.min(head.length, PREFACE.length)).equals(head.subarray(0, Math.min(head.length, PREFACE.length)))) {
          h2.emit("connection", socket);
        } else {
          h1.emit("connection", socket);
        }
      });
    });
  }
  const sockets = new Set<net.Socket>();
  listener.on("connection", (sock: net.Socket) => {
    sockets.add(sock);
    sock.on("close", () => sockets.delete(sock));
  });
  // HTTP/2 sessions (h2c here, h2 with TLS): tracked so shutdown can close them gracefully (GOAWAY, then drain).
  const sessions = new Set<http2.ServerHttp2Session>();
  const trackSession = (session: http2.ServerHttp2Session) => {
    sessions.add(session);
    session.on("close", () => sessions.delete(session));
    // Idle HTTP/2 connections (no frames for idleTimeout): GOAWAY, then closed once in-flight streams end.
    session.setTimeout(idleTimeout, () => {
      session.close();
      setTimeout(() => session.destroy(), 5_000).unref();
    });
  };
  h2.on("session", trackSession);
  listener.on("session", trackSession);
  await new Promise<void>((resolve, reject) => {
    listener.once("error", reject);
    listener.listen(opts.port, opts.host, () => resolve());
  });
  // The HTTP/1.1 server never listens itself (the net server hands it sockets), so tell it it is serving: that starts
  // its connection tracking (headers/request timeouts, closeIdleConnections).
  h1.emit("listening");
  const port = (listener.address() as net.AddressInfo).port;
  return {
    port,
    shutdown: (graceMs) =>
      new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          for (const sock of sockets) sock.destroy();
          resolve();
        }, graceMs);
        timer.unref();
        listener.close(() => {
          clearTimeout(timer);
          resolve();
        });
        // In-flight requests finish; idle keep-alive connections close now; HTTP/2 sessions get GOAWAY and drain.
        closing = true;
        h1.closeIdleConnections();
        for (const sock of sockets) {
          const message = (sock as unknown as { _httpMessage?: http.ServerResponse | null })._httpMessage;
          if (message === null) sock.end();
          else if (message && !message.headersSent) message.setHeader("connection", "close");
          else if (message) message.once("finish", () => sock.end());
        }
        for (const session of sessions) session.close();
      }),
  };
}

