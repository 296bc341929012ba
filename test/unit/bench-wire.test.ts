/**
 * The bench's load generator reads answers without protobuf (bench/lib/grpc-wire.ts). What it counts is what the
 * bench reports: a denial for UNAVAILABLE (the store's deadline passed, the server failed closed) is an answer, not
 * a decision of the quota, and must be told apart, in single answers as in batches.
 */
import { create, toBinary } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { grpcFrame, scanBatchAnswer, scanReserveAnswer } from "../../bench/lib/grpc-wire.ts";
import { CheckAndReserveBatchResponseSchema, CheckAndReserveResponseSchema } from "../../src/gen/quota/v1/quota_pb.ts";
import { Decision, DenyReason } from "../../src/gen/quota/v1/types_pb.ts";

const limits = [{ name: "monthly", limit: 1000n, used: 3n, remaining: 997n }];

describe("bench wire scanning", () => {
  it("reads a single answer's decision, deny reason and reservation id", () => {
    const allowed = create(CheckAndReserveResponseSchema, { decision: Decision.ALLOWED, reservationId: "r~acct~1", limits });
    expect(scanReserveAnswer(grpcFrame(toBinary(CheckAndReserveResponseSchema, allowed)))).toEqual({ decision: 1, reason: 0, reservationId: "r~acct~1" });
    const unavailable = create(CheckAndReserveResponseSchema, { decision: Decision.DENIED, reason: DenyReason.UNAVAILABLE });
    expect(scanReserveAnswer(grpcFrame(toBinary(CheckAndReserveResponseSchema, unavailable)))).toMatchObject({ decision: 2, reason: 12 });
    const exhausted = create(CheckAndReserveResponseSchema, { decision: Decision.DENIED, reason: DenyReason.QUOTA_EXHAUSTED, limits });
    expect(scanReserveAnswer(grpcFrame(toBinary(CheckAndReserveResponseSchema, exhausted)))).toMatchObject({ decision: 2, reason: DenyReason.QUOTA_EXHAUSTED });
  });

  it("counts a batch's allowed, denied, UNAVAILABLE denials and item errors", () => {
    const m = create(CheckAndReserveBatchResponseSchema, {
      results: [
        { result: { case: "response", value: { decision: Decision.ALLOWED, reservationId: "r1", limits } } },
        { result: { case: "response", value: { decision: Decision.DENIED, reason: DenyReason.UNAVAILABLE } } },
        { result: { case: "response", value: { decision: Decision.DENIED, reason: DenyReason.RATE_LIMITED, limits } } },
        { result: { case: "error", value: { code: 3, message: "requests[3].product: is required" } } },
        { result: { case: "response", value: { decision: Decision.ALLOWED, reservationId: "r5" } } },
      ],
    });
    expect(scanBatchAnswer(grpcFrame(toBinary(CheckAndReserveBatchResponseSchema, m)))).toEqual({ allowed: 2, denied: 2, itemErrors: 1, deniedUnavailable: 1 });
  });
});
