/**
 * Scenario (z), the machine's own latency: a bare node:http2 server that answers every gRPC call with one canned
 * CheckAndReserveResponse (ALLOWED, a fixed reservation id), touching no Redis and no protobuf runtime. The open
 * loop runs it beside the floor (c) and our server (d): what the load generator, the kernel's loopback and this
 * machine's scheduler cost a call before any service does anything, so a tail the echo has too is not ours.
 *
 *   node bench/echo-server.ts PORT      prints "ready <port>" when serving; SIGTERM stops it
 */
import * as http2 from "node:http2";

const port = Number(process.argv[2] ?? 0);
const id = Buffer.from("r~echo");
// quota.v1.CheckAndReserveResponse { decision = 1 (ALLOWED), reservation_id = 3 }, in a gRPC frame.
const body = Buffer.from([0x08, 0x01, 0x1a, id.length, ...id]);
const frame = Buffer.concat([Buffer.from([0, 0, 0, 0, body.length]), body]);

const server = http2.createServer();
server.on("stream", (stream) => {
  stream.on("data", () => {});
  stream.on("error", () => {});
  stream.on("end", () => {
    stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
    stream.once("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
    stream.end(frame);
  });
});
server.listen(port, "127.0.0.1", () => {
  const a = server.address();
  console.log(`ready ${typeof a === "object" && a ? a.port : port}`);
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
