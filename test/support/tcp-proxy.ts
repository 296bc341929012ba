/**
 * A TCP proxy on 127.0.0.1 that a fault test controls: `cut()` closes every connection and refuses new ones (a
 * dependency that is down), `stall()` keeps connections open but stops forwarding (a dependency that hangs), and
 * `restore()` goes back to forwarding.
 */
import * as net from "node:net";

export class TcpProxy {
  #server: net.Server;
  #pairs = new Set<[net.Socket, net.Socket]>();
  #mode: "open" | "cut" | "stall" = "open";
  port = 0;

  private constructor(targetPort: number, targetHost: string) {
    this.#server = net.createServer((client) => {
      if (this.#mode === "cut") {
        client.destroy();
        return;
      }
      const upstream = net.connect(targetPort, targetHost);
      const pair: [net.Socket, net.Socket] = [client, upstream];
      this.#pairs.add(pair);
      const forward = (from: net.Socket, to: net.Socket) =>
        from.on("data", (chunk) => {
          if (this.#mode === "open") to.write(chunk);
        });
      forward(client, upstream);
      forward(upstream, client);
      const close = () => {
        client.destroy();
        upstream.destroy();
        this.#pairs.delete(pair);
      };
      client.on("close", close).on("error", close);
      upstream.on("close", close).on("error", close);
    });
  }

  static async start(targetPort: number, targetHost = "127.0.0.1"): Promise<TcpProxy> {
    const p = new TcpProxy(targetPort, targetHost);
    await new Promise<void>((resolve) => p.#server.listen(0, "127.0.0.1", resolve));
    p.port = (p.#server.address() as net.AddressInfo).port;
    return p;
  }

  /** Client connections open through the proxy right now (e.g. to see that a service closed its Redis clients). */
  get connections(): number {
    return this.#pairs.size;
  }

  cut(): void {
    this.#mode = "cut";
    for (const [a, b] of this.#pairs) {
      a.destroy();
      b.destroy();
    }
    this.#pairs.clear();
  }

  stall(): void {
    this.#mode = "stall";
  }

  restore(): void {
    if (this.#mode === "stall") {
      // Bytes dropped while stalled leave those connections corrupt: close them, clients reconnect.
      for (const [a, b] of this.#pairs) {
        a.destroy();
        b.destroy();
      }
      this.#pairs.clear();
    }
    this.#mode = "open";
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}
