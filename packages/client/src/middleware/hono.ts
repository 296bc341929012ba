/**
 * Hono middleware (Hono 4, any runtime; on Node through @hono/node-server): `app.use(quotaLimit({ client, getKey,
 * product }))`.
 *
 * Before the handler: CheckAndReserve (the answer is in `c.get("quota")`); denials answer 429 / 402 / 401 / 403.
 * Release when the handler is done: COMMIT with the actual-cost callbacks, or CANCEL when it threw (`c.error`), the
 * status is 5xx, or the request's AbortSignal fired (the client went away; @hono/node-server aborts it when the
 * connection closes early) — an abort is released at once, even if the handler is still running. A streamed body
 * is released when the handler returns its Response, not when the last chunk is sent.
 */
import type { Context, MiddlewareHandler } from "hono";
import type { CheckResult } from "../client.ts";
import { check, denialBody, headersFor, once, resolveOptions, settle, type Denial, type QuotaMiddlewareOptions } from "./core.ts";

export type HonoQuotaOptions = QuotaMiddlewareOptions<[c: Context]>;

/** `c.get("quota")` is typed with `new Hono<QuotaEnv>()` (or an Env that extends it). */
export type QuotaEnv = { Variables: { quota: CheckResult | undefined } };

export function quotaLimit(options: HonoQuotaOptions): MiddlewareHandler<QuotaEnv> {
  const o = resolveOptions(options, "quotaLimit (hono)");
  const deny = (c: Context, d: Denial) => c.json(denialBody(d), d.status as 401, d.headers);
  return async (c, next) => {
    const ctx: [Context] = [c];
    const step = await check(o, c.req.method, ctx);
    switch (step.kind) {
      case "skip":
        return next();
      case "unavailable-open": {
        const own = await o.onError?.(step.error, { phase: "check" }, ...ctx);
        if (own instanceof Response) return own;
        c.set("quota", step.result);
        return next();
      }
      case "unavailable-closed": {
        const own = await o.onError?.(step.error, { phase: "check" }, ...ctx);
        return own instanceof Response ? own : deny(c, step.denial);
      }
      case "denied": {
        const own = await o.onDenied?.(step.denial, ...ctx);
        return own instanceof Response ? own : deny(c, step.denial);
      }
      case "allowed": {
        const result = step.result;
        const headers = headersFor(o, result);
        for (const [k, v] of Object.entries(headers)) c.header(k, v);
        c.set("quota", result);
        const end = once((ending) => void settle(o, result, ending, ctx));
        const signal = c.req.raw.signal;
        const onAbort = () => end({ aborted: true, failed: false });
        // Gone while CheckAndReserve was in flight: an already-aborted signal fires no event.
        if (signal.aborted) onAbort();
        signal.addEventListener("abort", onAbort, { once: true });
        try {
          await next();
        } catch (e) {
          end({ aborted: signal.aborted, failed: true });
          throw e;
        } finally {
          signal.removeEventListener("abort", onAbort);
        }
        end({ aborted: signal.aborted, failed: c.error !== undefined || c.res.status >= 500 });
        // Headers set before next() reach c.json/c.text responses only; a handler that returns its own Response
        // replaces them, so they are added to it (c.header copies a finalized response, whose headers may be
        // immutable).
        for (const [k, v] of Object.entries(headers)) if (c.res.headers.get(k) === null) c.header(k, v);
        return;
      }
    }
  };
}

export { statusFor, type Denial, type DenialReason, type ErrorPhase, type QuotaMiddlewareOptions } from "./core.ts";
