/**
 * Express middleware (Express 4.21+ and 5): `app.use(quotaLimit({ client, getKey, product }))`.
 *
 * Before the handler: CheckAndReserve; on ALLOWED the rate-limit headers are set and the answer is in
 * `res.locals.quota`; on a denial the request ends with 429 / 402 / 401 / 403 (see `statusFor`). After the
 * response: Release — COMMIT with the actual-cost callbacks, or CANCEL when the client aborted or the handler failed.
 * Express turns a thrown handler into a 5xx response (its default error handler answers 500), which is how a throw
 * is seen here; an error handler of yours that answers 4xx makes it a COMMIT.
 */
import type { NextFunction, Request, RequestHandler, Response } from "express";
import type { CheckResult } from "../client.ts";
import { check, denialBody, headersFor, resolveOptions, settle, type QuotaMiddlewareOptions } from "./core.ts";
import { onResponseEnd } from "./node.ts";

declare global {
  namespace Express {
    interface Locals {
      /** The CheckAndReserve answer for this request (set by @quota-authority/client's quotaLimit). */
      quota?: CheckResult;
    }
  }
}

export type ExpressQuotaOptions = QuotaMiddlewareOptions<[req: Request, res: Response]>;

export function quotaLimit(options: ExpressQuotaOptions): RequestHandler {
  const o = resolveOptions(options, "quotaLimit (express)");
  const run = async (req: Request, res: Response, next: NextFunction): Promise<void> => {
    const ctx: [Request, Response] = [req, res];
    const step = await check(o, req.method, ctx);
    switch (step.kind) {
      case "skip":
        return next();
      case "unavailable-open":
        await o.onError?.(step.error, { phase: "check" }, ...ctx);
        if (res.headersSent) return;
        res.locals.quota = step.result;
        return next();
      case "unavailable-closed":
        await o.onError?.(step.error, { phase: "check" }, ...ctx);
        if (!res.headersSent) res.status(step.denial.status).set(step.denial.headers).json(denialBody(step.denial));
        return;
      case "denied":
        await o.onDenied?.(step.denial, ...ctx);
        if (!res.headersSent) res.status(step.denial.status).set(step.denial.headers).json(denialBody(step.denial));
        return;
      case "allowed": {
        const result = step.result;
        res.set(headersFor(o, result));
        res.locals.quota = result;
        onResponseEnd(res, () => false, (ending) => void settle(o, result, ending, ctx));
        return next();
      }
    }
  };
  return (req, res, next) => {
    run(req, res, next).catch(next);
  };
}

export { statusFor, type Denial, type DenialReason, type ErrorPhase, type QuotaMiddlewareOptions } from "./core.ts";
