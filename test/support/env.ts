/** Where the integration tests find the machine's services; each test file isolates itself inside them. */
export const TEST_REDIS_URL = process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379";
export const TEST_DATABASE_URL = process.env.TEST_DATABASE_URL ?? "postgresql://postgres@127.0.0.1:5432/postgres";
export const T0 = Date.UTC(2026, 0, 15, 12, 0, 0);

/** A clock the test moves by hand. */
export class ManualClock {
  #now: number;
  constructor(start = T0) {
    this.#now = start;
  }
  now = (): number => this.#now;
  advance(ms: number): void {
    this.#now += ms;
  }
  set(ms: number): void {
    this.#now = ms;
  }
}

export function uniqueId(prefix: string): string {
  return `${prefix}${process.pid.toString(36)}${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
}
