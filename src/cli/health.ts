/**
 * A grpc.health.v1 `Check` client for probes and `helm test`: exit 0 when the service is SERVING, 1 otherwise
 * (NOT_SERVING, unknown service, unreachable, timeout). Standalone — it loads only grpc-js — so an exec probe
 * stays cheap; kubelet's own gRPC probe cannot reach a sidecar bound to 127.0.0.1, nor speak TLS.
 *
 *   node src/cli/health.ts --address HOST:PORT [--service NAME] [--timeout-ms N] [--tls [--ca F] [--cert F --key F]]
 */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import * as grpc from "@grpc/grpc-js";
import { service as healthService } from "grpc-health-check";

const STATUS = ["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"];

export async function checkHealth(o: { address: string; service?: string; timeoutMs?: number; tls?: boolean; ca?: string; cert?: string; key?: string }): Promise<string> {
  const Client = grpc.makeClientConstructor(healthService as never, "Health");
  const credentials = o.tls
    ? grpc.credentials.createSsl(
        o.ca ? readFileSync(o.ca) : null,
        o.key ? readFileSync(o.key) : null,
        o.cert ? readFileSync(o.cert) : null,
        // Probes dial an address, not the certificate's name; the point is the answer, not the peer's identity.
        { checkServerIdentity: () => undefined },
      )
    : grpc.credentials.createInsecure();
  const client = new Client(o.address, credentials) as unknown as grpc.Client & { check(req: unknown, opts: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: { status: string | number }) => void): void };
  try {
    return await new Promise<string>((resolve, reject) =>
      client.check({ service: o.service ?? "" }, { deadline: Date.now() + (o.timeoutMs ?? 2000) }, (err, res) => {
        if (err) reject(new Error(`${grpc.status[err.code] ?? err.code}: ${err.details}`));
        else resolve(typeof res!.status === "number" ? (STATUS[res!.status] ?? String(res!.status)) : res!.status);
      }),
    );
  } finally {
    client.close();
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({
    options: {
      address: { type: "string", default: "127.0.0.1:50051" },
      service: { type: "string", default: "" },
      "timeout-ms": { type: "string", default: "2000" },
      tls: { type: "boolean", default: false },
      ca: { type: "string" },
      cert: { type: "string" },
      key: { type: "string" },
    },
  });
  try {
    const status = await checkHealth({
      address: values.address,
      service: values.service,
      timeoutMs: Number(values["timeout-ms"]),
      tls: values.tls,
      ...(values.ca ? { ca: values.ca } : {}),
      ...(values.cert ? { cert: values.cert } : {}),
      ...(values.key ? { key: values.key } : {}),
    });
    console.log(`${values.address} ${values.service || '""'}: ${status}`);
    process.exitCode = status === "SERVING" ? 0 : 1;
  } catch (e) {
    console.error(`${values.address} ${values.service || '""'}: ${(e as Error).message}`);
    process.exitCode = 1;
  }
}
