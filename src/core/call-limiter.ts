/**
 * A per-caller call budget in this process (fixed one-minute windows): GetLimits is cheap to ask and costs
 * Postgres and Redis reads, so every key (or account) gets `perMinute` calls per minute per replica. The table is
 * bounded: the oldest windows are forgotten first.
 */
import { ResourceExhaustedError } from "./errors.ts";
import type { Clock } from "./ports.ts";

export class CallLimiter {
  readonly #perMinute: number;
  readonly #clock: Clock;
  readonly #what: string;
  readonly #max: number;
  readonly #windows = new Map<string, { start: number; count: number }>();

  /** `perMinute` 0 = unlimited. */
  constructor(what: string, perMinute: number, clock: Clock, maxCallers = 100_000) {
    this.#what = what;
    this.#perMinute = perMinute;
    this.#clock = clock;
    this.#max = maxCallers;
  }

  /** Counts one call by `caller`; RESOURCE_EXHAUSTED past the budget. */
  take(caller: string): void {
    if (this.#perMinute === 0) return;
    const now = this.#clock.now();
    const w = this.#windows.get(caller);
    if (!w || now - w.start >= 60_000) {
      this.#windows.delete(caller);
      while (this.#windows.size >= this.#max) this.#windows.delete(this.#windows.keys().next().value!);
      this.#windows.set(caller, { start: now, count: 1 });
      return;
    }
    if (++w.count > this.#perMinute) {
      throw new ResourceExhaustedError(`${this.#what}: at most ${this.#perMinute} calls per minute; retry in ${Math.ceil((w.start + 60_000 - now) / 1000)} s`);
    }
  }
}
