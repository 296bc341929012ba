/**
 * Fastify plugin (Fastify 5): `await app.register(quotaLimit({ client, getKey, product }))`.
 *
 * Registered like a `fastify-plugin` plugin (not encapsulated): its hooks apply to the context it is registered in
 * and to everything registered after it there; register it inside your own plugin to limit only those routes.
 * `onRequest` calls CheckAndReserve (the answer is in `request.quota`); the response ends the reservation: COMMIT
 * with the actual-cost callbacks, or CANCEL when the client aborted, the handler threw (`onError` hook) or the
 * status is 5xx.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { CheckResult } from "../client.ts";
import { check, denialBody, headersFor, resolveOptions, settle, type QuotaMiddlewareOptions } from "./core.ts";
import { onResponseEnd } from "./node.ts";

declare module "fastify" {
  interface FastifyRequest {
    /** The CheckAndReserve answer for this request (set by @quota-authority/client's quotaLimit). */
    quota: CheckResult | undefined;
  }
}

export type FastifyQuotaOptions = QuotaMiddlewareOptions<[request: FastifyRequest, reply: FastifyReply]>;

const threwKey = Symbol("quota-authority.threw");
type Marked = FastifyRequest & { [threwKey]?: boolean };

export function quotaLimit(options: FastifyQuotaOptions): (app: FastifyInstance) => Promise<void> {
  const o = resolveOptions(options, "quotaLimit (fastify)");
  const plugin = async (app: FastifyInstance): Promise<void> => {
    if (!app.hasRequestDecorator("quota")) app.decorateRequest("quota", undefined);
    app.addHook("onError", async (request) => {
      (request as Marked)[threwKey] = true;
    });
    app.addHook("onRequest", async (request, reply) => {
      const ctx: [FastifyRequest, FastifyReply] = [request, reply];
      const step = await check(o, request.method, ctx);
      switch (step.kind) {
        case "skip":
          return;
        case "unavailable-open":
          await o.onError?.(step.error, { phase: "check" }, ...ctx);
          if (reply.sent) return reply;
          request.quota = step.result;
          return;
        case "unavailable-closed":
          await o.onError?.(step.error, { phase: "check" }, ...ctx);
          if (!reply.sent) await reply.code(step.denial.status).headers(step.denial.headers).send(denialBody(step.denial));
          return reply;
        case "denied":
          await o.onDenied?.(step.denial, ...ctx);
          if (!reply.sent) await reply.code(step.denial.status).headers(step.denial.headers).send(denialBody(step.denial));
          return reply;
        case "allowed": {
          const result = step.result;
          const headers = headersFor(o, result);
          reply.headers(headers);
          // Also on the raw response, so a handler that writes it directly (reply.raw / hijack) still sends them;
          // when Fastify writes the response, its own headers take precedence (the same values).
          for (const [k, v] of Object.entries(headers)) reply.raw.setHeader(k, v);
          request.quota = result;
          onResponseEnd(reply.raw, () => (request as Marked)[threwKey] === true, (ending) => void settle(o, result, ending, ctx));
          return;
        }
      }
    });
  };
  // What fastify-plugin does: do not encapsulate, so the hooks reach the routes of the registering context.
  Object.assign(plugin, { [Symbol.for("skip-override")]: true, [Symbol.for("fastify.display-name")]: "@quota-authority/client" });
  return plugin;
}

export { statusFor, type Denial, type DenialReason, type ErrorPhase, type QuotaMiddlewareOptions } from "./core.ts";
