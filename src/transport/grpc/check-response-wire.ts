/**
 * A dedicated protobuf encoder for quota.v1.CheckAndReserveResponse, the answer of the hot path. The generic
 * toBinary walks the schema, forks and joins a growing buffer per nested message (every LimitStatus, source,
 * Timestamp, Duration and header entry); this one measures the message first, then writes it once into a buffer
 * of exactly that size. Its bytes are identical to toBinary's (same field order, proto3 implicit presence, map
 * entries with key and value always written): test/unit/check-response-wire.test.ts compares them.
 * Messages carrying unknown fields go through toBinary.
 */
import { toBinary } from "@bufbuild/protobuf";
import type { Duration, Timestamp } from "@bufbuild/protobuf/wkt";
import { CheckAndReserveResponseSchema, type CheckAndReserveResponse } from "../../gen/quota/v1/quota_pb.ts";
import type { CapacitySource, LimitStatus } from "../../gen/quota/v1/types_pb.ts";

const TWO_53 = 2 ** 53;

/** Bytes of a varint of a non-negative integer below 2^53 (a Number). */
function varintSize(v: number): number {
  let n = 1;
  while (v >= 128) {
    v = Math.floor(v / 128);
    n++;
  }
  return n;
}

/** int32 / enum: negative values are sign-extended to 10 bytes. */
const int32Size = (v: number): number => (v < 0 ? 10 : varintSize(v));
function int64Size(v: bigint): number {
  if (v >= 0n && v < 9007199254740992n) return varintSize(Number(v));
  if (v < 0n) return 10;
  let n = 1;
  for (let x = BigInt.asUintN(64, v); x >= 128n; x >>= 7n) n++;
  return n;
}
/** Tag of a field below 16 is one byte. */
const strSize = (s: string): number => {
  const len = Buffer.byteLength(s, "utf8");
  return varintSize(len) + len;
};

function tsSize(t: Timestamp | Duration): number {
  let n = 0;
  if (t.seconds !== 0n) n += 1 + int64Size(t.seconds);
  if (t.nanos !== 0) n += 1 + int32Size(t.nanos);
  return n;
}

function sourceSize(s: CapacitySource): number {
  let n = 0;
  if (s.kind !== "") n += 1 + strSize(s.kind);
  if (s.id !== "") n += 1 + strSize(s.id);
  if (s.amount !== 0n) n += 1 + int64Size(s.amount);
  if (s.used !== 0n) n += 1 + int64Size(s.used);
  if (s.expiresAt !== undefined) {
    const m = tsSize(s.expiresAt);
    n += 1 + varintSize(m) + m;
  }
  if (s.priority !== 0) n += 1 + int32Size(s.priority);
  if (s.product !== "") n += 1 + strSize(s.product);
  return n;
}

function limitSize(l: LimitStatus, sourceSizes: number[]): number {
  let n = 0;
  if (l.name !== "") n += 1 + strSize(l.name);
  if (l.scope !== 0) n += 1 + int32Size(l.scope);
  if (l.kind !== 0) n += 1 + int32Size(l.kind);
  if (l.unit !== "") n += 1 + strSize(l.unit);
  if (l.limit !== 0n) n += 1 + int64Size(l.limit);
  if (l.used !== 0n) n += 1 + int64Size(l.used);
  if (l.remaining !== 0n) n += 1 + int64Size(l.remaining);
  if (l.resetsAt !== undefined) {
    const m = tsSize(l.resetsAt);
    n += 1 + varintSize(m) + m;
  }
  if (l.window !== undefined) {
    const m = tsSize(l.window);
    n += 1 + varintSize(m) + m;
  }
  if (l.overage !== 0n) n += 1 + int64Size(l.overage);
  if (l.exceeded) n += 2;
  for (const s of l.sources) {
    const m = sourceSize(s);
    sourceSizes.push(m);
    n += 1 + varintSize(m) + m;
  }
  if (l.product !== "") n += 1 + strSize(l.product);
  if (l.overageTotal !== 0n) n += 1 + int64Size(l.overageTotal);
  return n;
}

class Writer {
  pos = 0;
  readonly buf: Buffer;
  constructor(buf: Buffer) {
    this.buf = buf;
  }
  byte(b: number): void {
    this.buf[this.pos++] = b;
  }
  varint(v: number): void {
    while (v >= 128) {
      this.buf[this.pos++] = (v % 128) | 128;
      v = Math.floor(v / 128);
    }
    this.buf[this.pos++] = v;
  }
  int32(v: number): void {
    if (v >= 0) this.varint(v);
    else this.varint64(BigInt.asUintN(64, BigInt(v)));
  }
  int64(v: bigint): void {
    if (v >= 0n && v < 9007199254740992n) this.varint(Number(v));
    else this.varint64(BigInt.asUintN(64, v));
  }
  varint64(v: bigint): void {
    while (v >= 128n) {
      this.buf[this.pos++] = Number(v & 127n) | 128;
      v >>= 7n;
    }
    this.buf[this.pos++] = Number(v);
  }
  str(s: string): void {
    const len = Buffer.byteLength(s, "utf8");
    this.varint(len);
    this.pos += this.buf.write(s, this.pos, len, "utf8");
  }
  ts(tag: number, t: Timestamp | Duration): void {
    this.byte(tag);
    this.varint(tsSize(t));
    if (t.seconds !== 0n) {
      this.byte(0x08);
      this.int64(t.seconds);
    }
    if (t.nanos !== 0) {
      this.byte(0x10);
      this.int32(t.nanos);
    }
  }
}

function writeSource(w: Writer, s: CapacitySource, size: number): void {
  w.byte(0x62); // field 12 (LimitStatus.sources), length-delimited
  w.varint(size);
  if (s.kind !== "") (w.byte(0x0a), w.str(s.kind));
  if (s.id !== "") (w.byte(0x12), w.str(s.id));
  if (s.amount !== 0n) (w.byte(0x18), w.int64(s.amount));
  if (s.used !== 0n) (w.byte(0x20), w.int64(s.used));
  if (s.expiresAt !== undefined) w.ts(0x2a, s.expiresAt);
  if (s.priority !== 0) (w.byte(0x30), w.int32(s.priority));
  if (s.product !== "") (w.byte(0x3a), w.str(s.product));
}

/** Writes one limit; its sources' sizes are `sourceSizes` from `si` on. Answers the index after them. */
function writeLimit(w: Writer, l: LimitStatus, size: number, sourceSizes: number[], si: number): number {
  w.byte(0x32); // field 6 (CheckAndReserveResponse.limits)
  w.varint(size);
  if (l.name !== "") (w.byte(0x0a), w.str(l.name));
  if (l.scope !== 0) (w.byte(0x10), w.int32(l.scope));
  if (l.kind !== 0) (w.byte(0x18), w.int32(l.kind));
  if (l.unit !== "") (w.byte(0x22), w.str(l.unit));
  if (l.limit !== 0n) (w.byte(0x28), w.int64(l.limit));
  if (l.used !== 0n) (w.byte(0x30), w.int64(l.used));
  if (l.remaining !== 0n) (w.byte(0x38), w.int64(l.remaining));
  if (l.resetsAt !== undefined) w.ts(0x42, l.resetsAt);
  if (l.window !== undefined) w.ts(0x4a, l.window);
  if (l.overage !== 0n) (w.byte(0x50), w.int64(l.overage));
  if (l.exceeded) (w.byte(0x58), w.byte(1));
  for (const s of l.sources) writeSource(w, s, sourceSizes[si++]!);
  if (l.product !== "") (w.byte(0x6a), w.str(l.product));
  if (l.overageTotal !== 0n) (w.byte(0x70), w.int64(l.overageTotal));
  return si;
}

const hasUnknown = (m: { $unknown?: unknown[] }): boolean => m.$unknown !== undefined && m.$unknown.length > 0;
const limitHasUnknown = (l: LimitStatus): boolean => hasUnknown(l) || l.sources.some(hasUnknown);

export function encodeCheckAndReserveResponse(m: CheckAndReserveResponse): Uint8Array {
  if (hasUnknown(m) || m.limits.some(limitHasUnknown)) return toBinary(CheckAndReserveResponseSchema, m);
  let n = 0;
  if (m.decision !== 0) n += 1 + int32Size(m.decision);
  if (m.reason !== 0) n += 1 + int32Size(m.reason);
  if (m.reservationId !== "") n += 1 + strSize(m.reservationId);
  if (m.overage) n += 2;
  if (m.retryAfter !== undefined) {
    const s = tsSize(m.retryAfter);
    n += 1 + varintSize(s) + s;
  }
  const limitSizes: number[] = [];
  const sourceSizes: number[] = [];
  for (const l of m.limits) {
    const s = limitSize(l, sourceSizes);
    limitSizes.push(s);
    n += 1 + varintSize(s) + s;
  }
  const headerKeys = Object.keys(m.headers);
  const entrySizes: number[] = [];
  for (const k of headerKeys) {
    const s = 1 + strSize(k) + 1 + strSize(m.headers[k]!);
    entrySizes.push(s);
    n += 1 + varintSize(s) + s;
  }
  if (m.cost !== 0n) n += 1 + int64Size(m.cost);
  if (m.reservedSpendMicros !== 0n) n += 1 + int64Size(m.reservedSpendMicros);
  if (m.shadowReason !== 0) n += 1 + int32Size(m.shadowReason);
  if (m.failOpen) n += 2;
  if (m.availableAt !== undefined) {
    const s = tsSize(m.availableAt);
    n += 1 + varintSize(s) + s;
  }
  if (m.deniedLimit !== "") n += 1 + strSize(m.deniedLimit);
  if (m.replayed) n += 2;
  if (n >= TWO_53) throw new Error("message too large");

  const w = new Writer(Buffer.allocUnsafe(n));
  if (m.decision !== 0) (w.byte(0x08), w.int32(m.decision));
  if (m.reason !== 0) (w.byte(0x10), w.int32(m.reason));
  if (m.reservationId !== "") (w.byte(0x1a), w.str(m.reservationId));
  if (m.overage) (w.byte(0x20), w.byte(1));
  if (m.retryAfter !== undefined) w.ts(0x2a, m.retryAfter);
  let si = 0;
  for (let i = 0; i < m.limits.length; i++) si = writeLimit(w, m.limits[i]!, limitSizes[i]!, sourceSizes, si);
  for (let i = 0; i < headerKeys.length; i++) {
    const k = headerKeys[i]!;
    w.byte(0x3a); // field 7 (headers), one map entry
    w.varint(entrySizes[i]!);
    w.byte(0x0a);
    w.str(k);
    w.byte(0x12);
    w.str(m.headers[k]!);
  }
  if (m.cost !== 0n) (w.byte(0x40), w.int64(m.cost));
  if (m.reservedSpendMicros !== 0n) (w.byte(0x48), w.int64(m.reservedSpendMicros));
  if (m.shadowReason !== 0) (w.byte(0x50), w.int32(m.shadowReason));
  if (m.failOpen) (w.byte(0x58), w.byte(1));
  if (m.availableAt !== undefined) w.ts(0x62, m.availableAt);
  if (m.deniedLimit !== "") (w.byte(0x6a), w.str(m.deniedLimit));
  if (m.replayed) (w.byte(0x70), w.byte(1));
  if (w.pos !== n) throw new Error(`CheckAndReserveResponse encoder wrote ${w.pos} of ${n} bytes`);
  return w.buf;
}
