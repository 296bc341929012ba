/**
 * Idle and slow connections (issue 7, item 19): a client that opens connections and sends nothing, or sends part of a
 * request and stops, must not hold them for ever — on the HTTP port (HTTP/1.1 and h2c behind the protocol sniffer)
 * and on the gRPC port. HTTP/2 settings advertise the stream limit.
 */
import * as http2 from "node:http2";
import * as net from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestApp, type TestApp } from "../support/app.ts";

/** Opens a TCP connection, writes `send` (if any), and resolves with how the connection ended within `waitMs`. */
function openAndWait(port: number, send: Buffer | string | undefined, waitMs: number): Promise<"closed by server" | "still open"> {
  return new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1", () => {
      if (send !== undefined) socket.write(send);
    });
    const timer = setTimeout(() => {
      socket.destroy();
      resolve("still open");
    }, waitMs);
    socket.on("data", () => {});
    socket.on("error", () => {});
    socket.on("close", () => {
      clearTimeout(timer);
      resolve("closed by server");
    });
  });
}

describe("idle and slow connections", () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startTestApp({ redis: false, env: { QUOTA_HEADERS_TIMEOUT_MS: "500", QUOTA_IDLE_TIMEOUT_MS: "1000", QUOTA_MAX_CONCURRENT_STREAMS: "7" } });
  });
  afterAll(async () => {
    await t?.stop();
  });

  it("HTTP port: a connection that sends nothing is closed (headers timeout)", async () => {
    expect(await openAndWait(t.app.httpPort, undefined, 4000)).toBe("closed by server");
  });

  it("HTTP port: an HTTP/1.1 request whose headers never finish is closed", async () => {
    expect(await openAndWait(t.app.httpPort, "GET /healthz HTTP/1.1\r\nHost: x\r\n", 4000)).toBe("closed by server");
  });

  it("HTTP port: an idle h2c connection is closed (idle timeout); its settings carry max concurrent streams", async () => {
    const session = http2.connect(`http://127.0.0.1:${t.app.httpPort}`);
    session.on("error", () => {});
    const settings = await new Promise<http2.Settings>((resolve) => session.once("remoteSettings", resolve));
    expect(settings.maxConcurrentStreams).toBe(7);
    const closed = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), 5000);
      session.once("close", () => {
        clearTimeout(timer);
        resolve(true);
      });
    });
    session.destroy();
    expect(closed).toBe(true);
  });

  it("gRPC port: a connection that sends nothing is closed (idle timeout)", async () => {
    expect(await openAndWait(t.app.grpcPort, undefined, 6000)).toBe("closed by server");
  });
});
