/**
 * A dedicated decoder for quota.v1.CheckAndReserveRequest, the request of the hot path. The generic fromBinary walks
 * the schema and makes a view and a TextDecoder call per string field; the usual request (ASCII strings, a mode, maybe
 * a cost) is read here in one pass, each string read straight out of the bytes. Anything else — a meters map, a
 * reservation TTL, a non-ASCII string, an unknown field, malformed bytes — goes through fromBinary, so the message
 * (and any error) is exactly fromBinary's: test/unit/hot-path.test.ts compares them.
 */
import { fromBinary } from "@bufbuild/protobuf";
import { CheckAndReserveRequestSchema, type CheckAndReserveRequest } from "../../gen/quota/v1/quota_pb.ts";
import type { Mode } from "../../gen/quota/v1/types_pb.ts";

export function decodeCheckAndReserveRequest(bytes: Uint8Array): CheckAndReserveRequest {
  return readCommon(Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)) ?? fromBinary(CheckAndReserveRequestSchema, bytes);
}

/** The message when every field is one this reader takes, else undefined. */
function readCommon(b: Buffer): CheckAndReserveRequest | undefined {
  // As create() makes it: every field at its zero value, the fields with explicit presence absent.
  const m: CheckAndReserveRequest = { $typeName: "quota.v1.CheckAndReserveRequest", apiKey: "", keyId: "", product: "", method: "", meters: {}, idempotencyId: "", mode: 0 as Mode };
  let pos = 0;
  while (pos < b.length) {
    const tag = b[pos++]!;
    // Fields 1 to 15 have one-byte tags: field number (tag >> 3), wire type (tag & 7).
    if (tag >= 128) return undefined;
    const field = tag >> 3;
    if ((tag & 7) === 2) {
      // A string: its length (at most 127 bytes here: one byte of varint), then ASCII bytes.
      const len = b[pos++];
      if (len === undefined || len >= 128 || pos + len > b.length) return undefined;
      for (let i = pos; i < pos + len; i++) if (b[i]! >= 128) return undefined;
      const value = b.toString("latin1", pos, pos + len);
      pos += len;
      if (field === 1) m.apiKey = value;
      else if (field === 2) m.keyId = value;
      else if (field === 3) m.product = value;
      else if (field === 4) m.method = value;
      else if (field === 8) m.idempotencyId = value;
      else return undefined;
    } else if ((tag & 7) === 0) {
      // A varint of at most 4 bytes (below 2^28): cost, spend and mode as small non-negative numbers.
      let value = 0;
      let shift = 1;
      let byte: number | undefined;
      let n = 0;
      do {
        byte = b[pos++];
        if (byte === undefined || ++n > 4) return undefined;
        value += (byte & 127) * shift;
        shift *= 128;
      } while (byte >= 128);
      if (field === 5) m.cost = BigInt(value);
      else if (field === 6) m.estimatedSpendMicros = BigInt(value);
      else if (field === 10) m.mode = value as Mode;
      else return undefined;
    } else {
      return undefined;
    }
  }
  return m;
}
