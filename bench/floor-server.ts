/**
 * Scenario (c), the floor: a bare @grpc/grpc-js server answering quota.v1.QuotaService/CheckAndReserve (and
 * Release) with one EVALSHA of bench/scripts/floor_reserve.lua (3 limits) on the same Redis, through the same
 * protobuf-es messages and an ioredis connection set up like the real server's (auto-pipelining). No key lookup,
 * no plan, no headers: what transport + one script cost.
 *
 *   node bench/floor-server.ts PORT REDIS_URL     prints "ready <port>" when serving; SIGTERM stops it
 */
import { readFileSync } from "node:fs";
import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Redis } from "ioredis";
import {
  type CheckAndReserveRequest,
  type CheckAndReserveResponse,
  type ReleaseRequest,
  type ReleaseResponse,
  CheckAndReserveRequestSchema,
  CheckAndReserveResponseSchema,
  ReleaseRequestSchema,
  ReleaseResponseSchema,
  ReleaseState,
} from "../src/gen/quota/v1/quota_pb.ts";
import { Decision } from "../src/gen/quota/v1/types_pb.ts";

const port = Number(process.argv[2] ?? 0);
const redis = new Redis(process.argv[3] ?? "redis://127.0.0.1:6379", { enableAutoPipelining: true, maxRetriesPerRequest: 1 });
const lua = readFileSync(new URL("./scripts/floor_reserve.lua", import.meta.url), "utf8");
redis.on("error", () => {});
redis.defineCommand("floorReserve", { numberOfKeys: 2, lua });
const reserve = (redis as unknown as { floorReserve: (...a: string[]) => Promise<[number, string, number, number]> }).floorReserve.bind(redis);

let seq = 0;
const prefix = `f${process.pid}-`;
const service: grpc.ServiceDefinition<grpc.UntypedServiceImplementation> = {
  CheckAndReserve: {
    path: "/quota.v1.QuotaService/CheckAndReserve",
    requestStream: false,
    responseStream: false,
    requestSerialize: (m: CheckAndReserveRequest) => Buffer.from(toBinary(CheckAndReserveRequestSchema, m)),
    requestDeserialize: (b: Buffer) => fromBinary(CheckAndReserveRequestSchema, b),
    responseSerialize: (m: CheckAndReserveResponse) => Buffer.from(toBinary(CheckAndReserveResponseSchema, m)),
    responseDeserialize: (b: Buffer) => fromBinary(CheckAndReserveResponseSchema, b),
  },
  Release: {
    path: "/quota.v1.QuotaService/Release",
    requestStream: false,
    responseStream: false,
    requestSerialize: (m: ReleaseRequest) => Buffer.from(toBinary(ReleaseRequestSchema, m)),
    requestDeserialize: (b: Buffer) => fromBinary(ReleaseRequestSchema, b),
    responseSerialize: (m: ReleaseResponse) => Buffer.from(toBinary(ReleaseResponseSchema, m)),
    responseDeserialize: (b: Buffer) => fromBinary(ReleaseResponseSchema, b),
  },
};

const server = new grpc.Server();
server.addService(service, {
  CheckAndReserve: (call: grpc.ServerUnaryCall<{ apiKey: string }, unknown>, cb: grpc.sendUnaryData<unknown>) => {
    const tag = `fl:{${call.request.apiKey}}`;
    const id = prefix + ++seq;
    reserve(`${tag}:c`, `${tag}:z`, "10", "1000000000000", "1000000", "1000", "1000000", "30000", id).then(
      ([ok, rid]) => cb(null, create(CheckAndReserveResponseSchema, ok === 1 ? { decision: Decision.ALLOWED, reservationId: rid, cost: 10n } : { decision: Decision.DENIED })),
      (e: Error) => cb({ code: grpc.status.UNAVAILABLE, details: e.message }),
    );
  },
  Release: (call: grpc.ServerUnaryCall<{ reservationId: string }, unknown>, cb: grpc.sendUnaryData<unknown>) => {
    // The floor's release only frees the concurrency slot; the id does not name the key, so this is a ZREM on a
    // key derived from the id's prefix (one per server process), which is as cheap as a release can be.
    redis.zrem(`fl:{release}:z`, call.request.reservationId).then(
      () => cb(null, create(ReleaseResponseSchema, { state: ReleaseState.COMMITTED, chargedCost: 10n })),
      (e: Error) => cb({ code: grpc.status.UNAVAILABLE, details: e.message }),
    );
  },
});
server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (err, bound) => {
  if (err) throw err;
  console.log(`ready ${bound}`);
});
process.on("SIGTERM", () => {
  server.tryShutdown(() => {
    redis.disconnect();
    process.exit(0);
  });
  setTimeout(() => process.exit(0), 2000).unref();
});
