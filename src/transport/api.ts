/**
 * The API surface shared by both adapters: the data-plane API (quota-api.ts) and the control-plane API
 * (admin-api.ts), each authenticating the caller (auth.ts) and translating messages (conversions.ts). No business
 * rule lives here; the adapters only add wire concerns.
 */
import type { AdminService } from "../core/admin-service.ts";
import type { QuotaService } from "../core/quota-service.ts";
import { createAdminApi, type AdminApi } from "./admin-api.ts";
import type { AuthConfig } from "./auth.ts";
import { createQuotaApi, type QuotaApi } from "./quota-api.ts";

export { BROWSER_METHODS, authenticateAdmin, authenticateDataPlane, type AuthConfig, type CallContext } from "./auth.ts";
export type { AdminApi } from "./admin-api.ts";
export type { QuotaApi } from "./quota-api.ts";

export interface Api {
  quota: QuotaApi;
  admin: AdminApi;
}

export function createApi(deps: { quota: QuotaService; admin: AdminService; auth: AuthConfig; adminLimiter?: (caller: string) => void; onInternalError?: (method: string, err: unknown) => void; gate?: () => void }): Api {
  const quota = createQuotaApi(deps.quota, deps.auth, deps.onInternalError);
  const admin = createAdminApi(deps.admin, deps.auth, deps.adminLimiter);
  return deps.gate ? { quota: gated(quota, deps.gate), admin: gated(admin, deps.gate) } : { quota, admin };
}

/** Every method first asks `gate` (e.g. UNAVAILABLE while the process is starting). */
function gated<T extends object>(api: T, gate: () => void): T {
  const out: Record<string, unknown> = {};
  for (const [name, fn] of Object.entries(api)) {
    const method = fn as (r: unknown, c: unknown) => Promise<unknown>;
    // Not an async wrapper (a promise and a frame per call): a refusal is still a rejected promise, not a throw.
    out[name] = (req: unknown, ctx: unknown) => {
      try {
        gate();
      } catch (e) {
        return Promise.reject(e);
      }
      return method(req, ctx);
    };
  }
  return out as T;
}
