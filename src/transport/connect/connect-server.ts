/**
 * The HTTP port (@connectrpc/connect-node): Connect, gRPC-Web and gRPC for browsers, curl and any HTTP client, over
 * HTTP/1.1 and cleartext HTTP/2 on one port. Node's http2 `allowHTTP1` works only with TLS, so a plain `net` server
 * peeks at each connection's first bytes: the HTTP/2 preface ("PRI * HTTP/2.0") goes to the h2c server, anything
 * else to the HTTP/1.1 server. Also serves /healthz, /readyz and /metrics, and CORS for allow-listed origins.
 */
import * as http from "node:http";
import * as http2 from "node:http2";
import * as https from "node:https";
import * as net from "node:net";
import { Code, ConnectError, type ConnectRouter, type HandlerContext } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { cors as connectCors } from "@connectrpc/connect";
import { QuotaAdminService } from "../../gen/quota/v1/admin_pb.ts";
import { QuotaService } from "../../gen/quota/v1/quota_pb.ts";
import type { Api, CallContext } from "../api.ts";
import { mapError } from "../errors.ts";

export interface ConnectServerOptions {
  api: Api;
  host: string;
  port: number;
  maxMessageBytes: number;
  allowedOrigins: readonly string[];
  /** TLS for HTTPS (HTTP/1.1 and h2 via ALPN). */
  tls?: { key: Buffer; cert: Buffer; clientCa?: Buffer; requireClientCert: boolean };
  health: () => { live: boolean; ready: boolean };
  metrics: () => Promise<{ contentType: string; body: string }>;
  onError?: (method: string, err: unknown) => void;
  onCall?: (method: string, code: string, seconds: number) => void;
}

export interface RunningConnectServer {
  port: number;
  shutdown(graceMs: number): Promise<void>;
}

/** Paths a browser may call (CORS is answered only for these). */
const BROWSER_PATHS = new Set([`/${QuotaService.typeName}/GetLimits`, `/${QuotaService.typeName}/TopUp`]);

function wrap(impl: object, opts: ConnectServerOptions): never {
  const out: Record<string, unknown> = {};
  for (const [name, fn] of Object.entries(impl)) {
    out[name] = async (req: unknown, hctx: HandlerContext) => {
      const started = process.hrtime.bigint();
      const socket = (hctx as unknown as { requestSocket?: { authorized?: boolean } }).requestSocket;
      const ctx: CallContext = {
        header: (h) => hctx.requestHeader.get(h) ?? undefined,
        peerVerified: Boolean(opts.tls?.requireClientCert && socket?.authorized),
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
    // Message decoding errors are the caller's fault: INVALID_ARGUMENT naming the problem.
    jsonOptions: { ignoreUnknownFields: false },
  });

  const allowHeaders = [...connectCors.allowedHeaders, "Authorization"].join(", ");
  const exposeHeaders = [...connectCors.exposedHeaders, "x-error-reason"].join(", ");
  const handler = (req: http.IncomingMessage, res: http.ServerResponse) => {
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
    (adapter as (a: typeof req, b: typeof res) => void)(req, res);
  };

  let listener: net.Server;
  const h1 = http.createServer(handler as http.RequestListener);
  const h2 = http2.createServer({}, handler as never);
  if (opts.tls) {
    listener = http2.createSecureServer(
      { key: opts.tls.key, cert: opts.tls.cert, allowHTTP1: true, ...(opts.tls.clientCa ? { ca: opts.tls.clientCa } : {}), requestCert: opts.tls.requireClientCert, rejectUnauthorized: opts.tls.requireClientCert },
      handler as never,
    ) as unknown as net.Server;
  } else {
    const PREFACE = Buffer.from("PRI * HTTP/2.0");
    listener = net.createServer((socket) => {
      socket.once("readable", function route() {
        const head: Buffer | null = socket.read(PREFACE.length) ?? socket.read();
        if (head === null) {
          socket.once("readable", route);
          return;
        }
        socket.unshift(head);
        if (head.length >= 3 && PREFACE.subarray(0, Math.min(head.length, PREFACE.length)).equals(head.subarray(0, Math.min(head.length, PREFACE.length)))) {
          h2.emit("connection", socket);
        } else {
          h1.emit("connection", socket);
        }
      });
    });
  }
  void https;
  const sockets = new Set<net.Socket>();
  listener.on("connection", (s: net.Socket) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  await new Promise<void>((resolve, reject) => {
    listener.once("error", reject);
    listener.listen(opts.port, opts.host, () => resolve());
  });
  const port = (listener.address() as net.AddressInfo).port;
  return {
    port,
    shutdown: (graceMs) =>
      new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          for (const s of sockets) s.destroy();
          resolve();
        }, graceMs);
        listener.close(() => {
          clearTimeout(timer);
          resolve();
        });
        h1.closeIdleConnections?.();
        for (const s of sockets) {
          // Idle keep-alive connections would hold close() open; in-flight requests finish first.
          if ((s as unknown as { _httpMessage?: unknown })._httpMessage === undefined) s.end();
        }
      }),
  };
}

export { Code };
