/**
 * InFlightReservations keeps the reservations in flight by the counter in this process's ids (small integers, not
 * id strings). Its count must be exactly what the map of id -> expiry it replaced counts, whatever the order in
 * which calls are answered, released, replayed and expire.
 */
import { describe, expect, it } from "vitest";
import { newReservationId, ownReservationSeq } from "../../src/core/ids.ts";
import { InFlightReservations } from "../../src/observability/in-flight.ts";

/** A small seeded generator (mulberry32): the same sequence every run. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe("ownReservationSeq", () => {
  it("reads the counter of this process's ids, in order, and -1 for anything else", () => {
    const a = newReservationId("acct_1", "abcdefghijklmnop");
    const b = newReservationId("acct_2", "qrstuvwxyzabcdef");
    expect(ownReservationSeq(a)).toBeGreaterThanOrEqual(0);
    expect(ownReservationSeq(b)).toBe(ownReservationSeq(a) + 1);
    const prefixed = a.slice(0, -22);
    expect(ownReservationSeq(`${prefixed}AAAAAAAAAAAA${a.slice(-10)}`)).toBe(-1); // another process's prefix
    expect(ownReservationSeq(a.slice(0, -1) + "é")).toBe(-1);
    expect(ownReservationSeq(a.slice(0, -1) + "*")).toBe(-1);
    expect(ownReservationSeq(a.slice(1))).toBe(ownReservationSeq(a)); // read from the end: the account id is free
    expect(ownReservationSeq(a.slice(-22))).toBe(-1); // no '~' before the tail
    expect(ownReservationSeq("")).toBe(-1);
    expect(ownReservationSeq("lease-peek")).toBe(-1);
  });
});

describe("InFlightReservations", () => {
  it("counts exactly what a map of id -> expiry counts, over 30,000 random operations", () => {
    const r = rng(8);
    const tracker = new InFlightReservations();
    const model = new Map<string, number>();
    let now = 1_000_000;
    const made: string[] = []; // made, not yet answered (answered out of order)
    const answered: string[] = [];
    const foreign = (i: number) => `r~acct_9~abcdefghijklmnop~ZZZZZZZZZZZZ${String(i).padStart(10, "0")}`;
    let foreignCount = 0;
    for (let op = 0; op < 30_000; op++) {
      const x = r();
      if (x < 0.35) {
        made.push(newReservationId("acct_1", "abcdefghijklmnop"));
      } else if (x < 0.6 && made.length > 0) {
        // answer one of the calls made, not necessarily the oldest; a tenth are denied (no reservation)
        const id = made.splice(Math.floor(r() * made.length), 1)[0]!;
        if (r() < 0.1) continue;
        const expires = now + 1000 + Math.floor(r() * 30_000);
        tracker.add(id, expires, now);
        model.set(id, expires);
        answered.push(id);
      } else if (x < 0.63 && answered.length > 0) {
        // an idempotent replay answers a reservation again (counted again until the new TTL, as the map did)
        const id = answered[Math.floor(r() * answered.length)]!;
        tracker.add(id, now + 5000, now);
        model.set(id, now + 5000);
      } else if (x < 0.66) {
        const id = foreign(foreignCount++);
        const expires = now + 2000;
        tracker.add(id, expires, now);
        model.set(id, expires);
        answered.push(id);
      } else if (x < 0.85 && answered.length > 0) {
        const id = answered[Math.floor(r() * answered.length)]!;
        tracker.release(id);
        model.delete(id);
      } else if (x < 0.97) {
        now += Math.floor(r() * 400);
      } else {
        let n = 0;
        for (const [id, e] of model) if (e > now) n++;
        else model.delete(id);
        expect(tracker.count(now), `op ${op}`).toBe(n);
      }
    }
    now += 40_000;
    expect(tracker.count(now)).toBe(0);
  });

  it("is bounded: past maxTracked entries new ones are not counted (as before), and the count stays exact below it", () => {
    const tracker = new InFlightReservations(4096);
    let now = 1_000_000;
    for (let i = 0; i < 10_000; i++) tracker.add(newReservationId("acct_1", "abcdefghijklmnop"), now + 60_000, now);
    expect(tracker.tracked).toBe(4096);
    expect(tracker.count(now)).toBe(4096);
    now += 60_000;
    expect(tracker.count(now)).toBe(0);
    tracker.add(newReservationId("acct_1", "abcdefghijklmnop"), now + 1000, now);
    expect(tracker.count(now)).toBe(1);
  });

  it("counts the same after a scrape moves its epoch forward (every ~6 days: expiries stay small integers)", () => {
    const tracker = new InFlightReservations();
    let now = 1_000_000;
    const early = newReservationId("acct_1", "abcdefghijklmnop");
    tracker.add(early, now + 1000, now);
    now += 2 ** 29 + 5; // a week later
    const a = newReservationId("acct_1", "abcdefghijklmnop");
    const b = newReservationId("acct_1", "abcdefghijklmnop");
    tracker.add(a, now + 1000, now);
    tracker.add(b, now + 3000, now);
    expect(tracker.count(now)).toBe(2); // moves the epoch
    tracker.release(a);
    expect(tracker.count(now + 2000)).toBe(1);
    expect(tracker.count(now + 3000)).toBe(0);
  });
});
