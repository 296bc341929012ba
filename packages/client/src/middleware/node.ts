/** Release timing for frameworks on Node's http server (Express, Fastify). */
import type { ServerResponse } from "node:http";
import { once, type Ending } from "./core.ts";

/**
 * Calls `done` once when the response is over: on `close`, which Node emits after the last byte was handed to the
 * socket (`writableFinished` true) or when the connection went away first (the client aborted). An aborted
 * request is released then, even if its handler is still running: the client no longer waits for it. A client that
 * left while CheckAndReserve was in flight has already closed the response (no `close` will come): released at once.
 */
export function onResponseEnd(res: ServerResponse, threw: () => boolean, done: (ending: Ending) => void): void {
  const end = once(done);
  if (!res.writableFinished && (res.destroyed || res.socket?.destroyed === true)) {
    end({ aborted: true, failed: false });
    return;
  }
  res.once("close", () => end({ aborted: !res.writableFinished, failed: threw() || res.statusCode >= 500 }));
}
