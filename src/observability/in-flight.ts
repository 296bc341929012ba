/**
 * The reservations made through this process that are neither released nor past their TTL, for the gauge
 * quota_reservations_in_flight, kept without keeping their ids.
 *
 * Each is remembered for its TTL: rate x TTL of them (~220,000 at 7,500 calls/s and the default 30 s). A map from
 * the id string (~80 characters) to a boxed expiry, what this replaced, cost ~150 B each in the old generation. This
 * process's ids carry a per-process counter (src/core/ids.ts), so the map is keyed by that counter and holds the
 * expiry as a small integer (ms since an epoch a scrape moves forward every ~6 days): neither is an object of its
 * own, ~38 B an entry in the map's one backing store (docs/performance.md, sixth pass). Ids made elsewhere (an
 * idempotent replay may answer the reservation another process made) keep their string; they are rare.
 *
 * Bounded at `maxTracked` entries of each kind (1,000,000, as before): past it new ones are not counted.
 */
import { ownReservationSeq } from "../core/ids.ts";

/** Counters are kept modulo 2^30 (a small integer): two ids 2^30 apart are never in flight at once. */
const SEQ_SPAN = 2 ** 30;
/** Expiries are ms since the tracker's epoch; a scrape moves the epoch forward once it is this old. */
const REBASE_MS = 2 ** 29;

export class InFlightReservations {
  /** counter mod 2^30 -> expiry in ms since `#epoch`, in the order they were answered */
  #own = new Map<number, number>();
  #others = new Map<string, number>();
  #epoch: number | undefined;
  readonly #max: number;

  constructor(maxTracked = 1_000_000) {
    this.#max = maxTracked;
  }

  /** A reservation answered by this process, open until `expiresAt` (ms). What is past its TTL is forgotten as new
   * ones come (insertion order: with the usual one TTL per plan the oldest expire first), not only at a scrape. */
  add(id: string, expiresAt: number, now: number): void {
    const epoch = (this.#epoch ??= now);
    const seq = ownReservationSeq(id);
    if (seq < 0) {
      forgetExpired(this.#others, now);
      if (this.#others.size < this.#max) this.#others.set(id, expiresAt);
      return;
    }
    forgetExpired(this.#own, now - epoch);
    if (this.#own.size < this.#max) this.#own.set(seq % SEQ_SPAN, expiresAt - epoch);
  }

  /** Released (committed or cancelled) through this process. */
  release(id: string): void {
    const seq = ownReservationSeq(id);
    if (seq < 0) this.#others.delete(id);
    else this.#own.delete(seq % SEQ_SPAN);
  }

  /** How many are in flight at `now`: a walk over every entry (the scrape's cost, not a call's). */
  count(now: number): number {
    const rel = now - (this.#epoch ?? now);
    for (const [seq, expires] of this.#own) if (expires <= rel) this.#own.delete(seq);
    if (rel >= REBASE_MS) {
      // every ~6 days: count from now again, so the expiries stay small integers (setting a key keeps its order)
      for (const [seq, expires] of this.#own) this.#own.set(seq, expires - rel);
      this.#epoch = now;
    }
    for (const [id, expires] of this.#others) if (expires <= now) this.#others.delete(id);
    return this.#own.size + this.#others.size;
  }

  /** What is kept, whatever its state: for tests of what is forgotten when. */
  get tracked(): number {
    return this.#own.size + this.#others.size;
  }
}

function forgetExpired<K>(map: Map<K, number>, now: number): void {
  for (const [key, expires] of map) {
    if (expires > now) break;
    map.delete(key);
  }
}
