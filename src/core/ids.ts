/**
 * Identifiers and API key secrets.
 *
 * An API key reads "qa_<key id>_<secret>": the key id (public, 16 base32 chars) finds the record; the secret
 * (32 random bytes, base64url) is stored only as its SHA-256 and compared in constant time. A fast hash is right
 * here: the secret has 256 bits of entropy, so there is nothing to brute-force, and the hot path cannot afford a
 * password hash.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";

const B32 = "abcdefghijklmnopqrstuvwxyz234567";

function base32(bytes: Uint8Array): string {
  let out = "";
  for (const b of bytes) out += B32[b & 31];
  return out;
}

export function newId(prefix: string): string {
  return `${prefix}_${base32(randomBytes(16))}`;
}

const SORTABLE = "0123456789abcdefghjkmnpqrstvwxyz"; // Crockford base32: ASCII order = numeric order
let lastMs = 0;
let counter = 0;

/** Ids that sort by creation order (wall-clock ms, then a per-process counter), then 60 random bits: ledger rows
 * created in the same millisecond still list in the order they were made. */
export function newSortableId(prefix: string): string {
  const ms = Date.now();
  counter = ms === lastMs ? counter + 1 : 0;
  lastMs = ms;
  let time = "";
  for (let v = ms, i = 0; i < 10; i++, v = Math.floor(v / 32)) time = SORTABLE[v % 32]! + time;
  let seq = "";
  for (let v = counter, i = 0; i < 4; i++, v = Math.floor(v / 32)) seq = SORTABLE[v % 32]! + seq;
  const rnd = randomBytes(12);
  let tail = "";
  for (const b of rnd) tail += SORTABLE[b & 31];
  return `${prefix}_${time}${seq}${tail}`;
}

export function newKeyId(): string {
  return base32(randomBytes(16));
}

const B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
/** 12 base64url characters (72 random bits) drawn once per process (and again when the counter wraps). */
let reservationPrefix = "";
let reservationSeq = 0;
const SEQ_WRAP = 2 ** 52;

function freshReservationPrefix(): void {
  reservationPrefix = randomBytes(9).toString("base64url");
  reservationSeq = 0;
}

/** Reservation ids carry the account id (Release finds the account's shard without a lookup) and the key id (its
 * plan prices the actual meters), then 22 base64url characters: a per-process random prefix (72 bits) and a
 * per-process counter (10 characters), so ids are unique across processes and restarts without a randomBytes call
 * per reservation (the hot path). The tail is not a secret: Release is authorized by the service token. */
export function newReservationId(accountId: string, keyId: string): string {
  if (reservationSeq >= SEQ_WRAP || reservationPrefix === "") freshReservationPrefix();
  // 10 base64url digits of the counter (< 2^52, exact in a double), most significant first: written into one
  // buffer and read as one string (not ten strings, one per digit prepended).
  let v = reservationSeq++;
  for (let i = 9; i >= 0; i--) {
    seqDigits[i] = B64URL_CODES[v % 64]!;
    v = Math.floor(v / 64);
  }
  return `r~${accountId}~${keyId}~${reservationPrefix}${seqDigits.toString("latin1")}`;
}
const B64URL_CODES = Buffer.from(B64URL, "latin1");
const seqDigits = Buffer.alloc(10);
/** A base64url digit's value by character code (-1: not a digit). */
const B64URL_VALUE = new Int8Array(128).fill(-1);
for (let i = 0; i < 64; i++) B64URL_VALUE[B64URL.charCodeAt(i)] = i;

/** The counter of a reservation id this process made (with its current prefix), or -1 for any other string (another
 * process's id, or not an id): src/observability/in-flight.ts keeps this process's ids in flight by it. Reads the
 * string in place: nothing is allocated. */
export function ownReservationSeq(id: string): number {
  const n = id.length;
  if (reservationPrefix === "" || n < 24 || id.charCodeAt(n - 23) !== 0x7e || !id.startsWith(reservationPrefix, n - 22)) return -1;
  let v = 0;
  for (let i = n - 10; i < n; i++) {
    const c = id.charCodeAt(i);
    const d = c < 128 ? B64URL_VALUE[c]! : -1;
    if (d < 0) return -1;
    v = v * 64 + d;
  }
  return v;
}

export function parseReservationId(reservationId: string): { accountId: string; keyId: string } | undefined {
  const m = /^r~([a-z0-9_-]{1,64})~([a-z2-7]{16})~[A-Za-z0-9_-]{22}$/.exec(reservationId);
  return m ? { accountId: m[1]!, keyId: m[2]! } : undefined;
}

export interface ParsedApiKey {
  keyId: string;
  secret: string;
}

export function formatApiKey(keyId: string, secret: string): string {
  return `qa_${keyId}_${secret}`;
}

export function newSecret(): string {
  return randomBytes(32).toString("base64url");
}

const API_KEY_RE = /^qa_[a-z2-7]{16}_[A-Za-z0-9_-]{43}$/;

/** (Checked with test() and cut at its fixed offsets: exec's match array per call is garbage on every request.) */
export function parseApiKey(text: string): ParsedApiKey | undefined {
  return API_KEY_RE.test(text) ? { keyId: text.slice(3, 19), secret: text.slice(20) } : undefined;
}

export function hashSecret(secret: string): string {
  return createHash("sha256").update(secret).digest("hex");
}

/** Constant-time comparison of a presented secret with a stored hash. */
export function secretMatches(secret: string, storedHash: string): boolean {
  const a = Buffer.from(hashSecret(secret), "hex");
  const b = Buffer.from(storedHash, "hex");
  return a.length === b.length && timingSafeEqual(a, b);
}
