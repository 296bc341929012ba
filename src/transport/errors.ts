/**
 * One table: core error code -> status, shared by the gRPC and Connect adapters. An error that is not a
 * QuotaError is a bug or a broken dependency: it becomes INTERNAL with a generic message, and its cause is logged.
 */
import { status as GrpcStatus } from "@grpc/grpc-js";
import { Code } from "@connectrpc/connect";
import { QuotaError, type ErrorCode } from "../core/errors.ts";

export const STATUS_TABLE: Record<ErrorCode, { grpc: GrpcStatus; connect: Code }> = {
  INVALID_ARGUMENT: { grpc: GrpcStatus.INVALID_ARGUMENT, connect: Code.InvalidArgument },
  NOT_FOUND: { grpc: GrpcStatus.NOT_FOUND, connect: Code.NotFound },
  ALREADY_EXISTS: { grpc: GrpcStatus.ALREADY_EXISTS, connect: Code.AlreadyExists },
  FAILED_PRECONDITION: { grpc: GrpcStatus.FAILED_PRECONDITION, connect: Code.FailedPrecondition },
  PERMISSION_DENIED: { grpc: GrpcStatus.PERMISSION_DENIED, connect: Code.PermissionDenied },
  UNAUTHENTICATED: { grpc: GrpcStatus.UNAUTHENTICATED, connect: Code.Unauthenticated },
  UNAVAILABLE: { grpc: GrpcStatus.UNAVAILABLE, connect: Code.Unavailable },
  RESOURCE_EXHAUSTED: { grpc: GrpcStatus.RESOURCE_EXHAUSTED, connect: Code.ResourceExhausted },
  ABORTED: { grpc: GrpcStatus.ABORTED, connect: Code.Aborted },
};

export interface MappedError {
  code: ErrorCode | "INTERNAL";
  grpc: GrpcStatus;
  connect: Code;
  message: string;
  reason: string;
  /** Set for INTERNAL: what to log (never sent to the caller). */
  cause?: unknown;
}

export function mapError(e: unknown): MappedError {
  if (e instanceof QuotaError) {
    const s = STATUS_TABLE[e.code];
    return { code: e.code, ...s, message: e.message, reason: e.reason };
  }
  return { code: "INTERNAL", grpc: GrpcStatus.INTERNAL, connect: Code.Internal, message: "internal error", reason: "INTERNAL", cause: e };
}
