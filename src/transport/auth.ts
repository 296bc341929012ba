/**
 * Who may call: the data plane takes the service bearer token (or a verified mTLS peer; no token configured =
 * sidecar on loopback), browsers with an allowed Origin may call GetLimits and TopUp only; the admin service
 * always needs the admin token. Tokens are compared in constant time.
 */
import { timingSafeEqual } from "node:crypto";
import { PermissionDeniedError, UnauthenticatedError } from "../core/errors.ts";
import type { Caller } from "../core/key-auth.ts";

export interface AuthConfig {
  /** Data-plane bearer token; empty = no token needed (sidecar on loopback). */
  serviceToken: string;
  /** Admin bearer token (always required for the admin service). */
  adminToken: string;
  /** Browser origins allowed to call GetLimits and wallet-funded TopUp. */
  allowedOrigins: readonly string[];
}

/** What an adapter knows about a call. */
export interface CallContext {
  /** Lower-case header names. */
  header(name: string): string | undefined;
  /** True when the peer presented a client certificate the TLS layer verified (mTLS). */
  peerVerified: boolean;
}

/** The only QuotaService methods a browser (a request with an allowed Origin) may call. */
export const BROWSER_METHODS: ReadonlySet<string> = new Set(["GetLimits", "TopUp"]);

function tokenMatches(presented: string | undefined, expected: string): boolean {
  if (!presented || !expected) return false;
  const m = /^Bearer\s+(.+)$/i.exec(presented);
  if (!m) return false;
  const a = Buffer.from(m[1]!);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

export function authenticateDataPlane(auth: AuthConfig, method: string, ctx: CallContext): Caller {
  const origin = ctx.header("origin");
  const authz = ctx.header("authorization");
  if (origin !== undefined && !tokenMatches(authz, auth.serviceToken)) {
    if (!auth.allowedOrigins.includes(origin) && !auth.allowedOrigins.includes("*")) throw new PermissionDeniedError(`origin ${origin} is not allowed`);
    if (!BROWSER_METHODS.has(method)) throw new PermissionDeniedError(`browsers may call only GetLimits and TopUp, not ${method}`);
    return { kind: "browser", origin };
  }
  if (ctx.peerVerified) return { kind: "service" };
  if (!auth.serviceToken) return { kind: "service" };
  if (authz === undefined) throw new UnauthenticatedError("missing authorization: Bearer <service token>");
  if (!tokenMatches(authz, auth.serviceToken)) throw new UnauthenticatedError("invalid service token");
  return { kind: "service" };
}

export function authenticateAdmin(auth: AuthConfig, ctx: CallContext): void {
  if (ctx.header("origin") !== undefined) throw new PermissionDeniedError("the admin service is not available to browsers");
  const authz = ctx.header("authorization");
  if (authz === undefined) throw new UnauthenticatedError("missing authorization: Bearer <admin token>");
  if (!tokenMatches(authz, auth.adminToken)) {
    if (tokenMatches(authz, auth.serviceToken)) throw new PermissionDeniedError("the service token cannot call the admin service");
    throw new UnauthenticatedError("invalid admin token");
  }
}
