/**
 * Hand-encoded gRPC frames for the load generator: the requests are tiny (a few string fields), so they are written
 * once per key here instead of through protobuf-es per call, and answers are scanned for the two fields the
 * generator needs (decision, reservation id) without decoding the rest. Keeps the generator's own cost per call low.
 */

function varint(n: number): number[] {
  const out: number[] = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return out;
}

function stringField(field: number, value: string): number[] {
  const bytes = Buffer.from(value, "utf8");
  return [...varint((field << 3) | 2), ...varint(bytes.length), ...bytes];
}

/** A length-prefixed gRPC message frame (uncompressed). */
export function grpcFrame(message: number[] | Uint8Array): Buffer {
  const body = Buffer.from(message);
  const frame = Buffer.allocUnsafe(5 + body.length);
  frame[0] = 0;
  frame.writeUInt32BE(body.length, 1);
  body.copy(frame, 5);
  return frame;
}

/** quota.v1.CheckAndReserveRequest { api_key = 1, product = 3, method = 4 } (the message, no frame header). */
function checkAndReserveMessage(apiKey: string, product: string, method: string): number[] {
  return [...stringField(1, apiKey), ...stringField(3, product), ...stringField(4, method)];
}

/** quota.v1.CheckAndReserveRequest { api_key = 1, product = 3, method = 4 }. */
export function checkAndReserveFrame(apiKey: string, product: string, method: string): Buffer {
  return grpcFrame(checkAndReserveMessage(apiKey, product, method));
}

/** quota.v1.CheckAndReserveBatchRequest { requests = 1 (repeated CheckAndReserveRequest) }: one item per key given. */
export function checkAndReserveBatchFrame(apiKeys: string[], product: string, method: string): Buffer {
  const out: number[] = [];
  for (const k of apiKeys) {
    const item = checkAndReserveMessage(k, product, method);
    out.push(...varint((1 << 3) | 2), ...varint(item.length), ...item);
  }
  return grpcFrame(out);
}

export interface BatchAnswer {
  allowed: number;
  denied: number;
  /** Items answered with a BatchItemError (field 2 of CheckAndReserveBatchResult). */
  itemErrors: number;
  /** Denied items whose reason is UNAVAILABLE (12): the counter store did not answer in time (fail closed). */
  deniedUnavailable: number;
}

/**
 * Counts the results of a CheckAndReserveBatchResponse (field 1, repeated CheckAndReserveBatchResult): per result,
 * field 1 is a CheckAndReserveResponse (its decision read as in scanReserveAnswer), field 2 a BatchItemError.
 */
export function scanBatchAnswer(frame: Buffer): BatchAnswer {
  const out: BatchAnswer = { allowed: 0, denied: 0, itemErrors: 0, deniedUnavailable: 0 };
  if (frame.length < 5) return out;
  const end = Math.min(frame.length, 5 + frame.readUInt32BE(1));
  let pos = 5;
  const readVarint = (): number => {
    let result = 0;
    let shift = 1;
    for (;;) {
      const b = frame[pos++]!;
      result += (b & 0x7f) * shift;
      if (b < 0x80) return result;
      shift *= 128;
    }
  };
  while (pos < end) {
    const tag = readVarint();
    if ((tag & 7) !== 2) break;
    const len = readVarint();
    const resultEnd = pos + len;
    if (tag >>> 3 === 1 && len > 0) {
      const inner = readVarint();
      const innerLen = readVarint();
      if (inner >>> 3 === 2) out.itemErrors++;
      else if (inner >>> 3 === 1) {
        // The decision is field 1 of the response; protobuf writes fields in order, so it comes first when set.
        const d = innerLen > 0 && frame[pos] === 0x08 ? frame[pos + 1]! : 0;
        if (d === 1) out.allowed++;
        else {
          out.denied++;
          // The reason (field 2) follows the decision.
          if (innerLen > 3 && frame[pos + 2] === 0x10 && frame[pos + 3] === 12) out.deniedUnavailable++;
        }
      }
    }
    pos = resultEnd;
  }
  return out;
}

/** quota.v1.ReleaseRequest { reservation_id = 1, outcome = 2 (COMMIT = 1) }. */
export function releaseFrame(reservationId: string): Buffer {
  return grpcFrame([...stringField(1, reservationId), 0x10, 0x01]);
}

/** quota.v1.GetLimitsRequest { api_key = 1 }. */
export function getLimitsFrame(apiKey: string): Buffer {
  return grpcFrame(stringField(1, apiKey));
}

export interface ReserveAnswer {
  /** quota.v1.Decision: 1 ALLOWED, 2 DENIED. */
  decision: number;
  /** quota.v1.DenyReason (0 when allowed; 12 UNAVAILABLE: the store's deadline passed, failed closed). */
  reason: number;
  reservationId: string;
}

/** Reads fields 1 (decision) and 3 (reservation_id) of a CheckAndReserveResponse inside a gRPC frame. */
export function scanReserveAnswer(frame: Buffer): ReserveAnswer {
  const out: ReserveAnswer = { decision: 0, reason: 0, reservationId: "" };
  if (frame.length < 5) return out;
  const end = Math.min(frame.length, 5 + frame.readUInt32BE(1));
  let pos = 5;
  const readVarint = (): number => {
    let result = 0;
    let shift = 1;
    for (;;) {
      const b = frame[pos++]!;
      result += (b & 0x7f) * shift;
      if (b < 0x80) return result;
      shift *= 128;
    }
  };
  while (pos < end) {
    const tag = readVarint();
    const field = tag >>> 3;
    const wire = tag & 7;
    if (wire === 0) {
      const v = readVarint();
      if (field === 1) out.decision = v;
      else if (field === 2) out.reason = v;
    } else if (wire === 2) {
      const len = readVarint();
      if (field === 3) out.reservationId = frame.toString("utf8", pos, pos + len);
      pos += len;
    } else if (wire === 1) pos += 8;
    else if (wire === 5) pos += 4;
    else break;
  }
  return out;
}
