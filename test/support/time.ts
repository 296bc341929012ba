/** Small timing helpers for tests that start processes and must never hang the runner. */

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Rejects if `p` has not settled within `ms` (a hanging call must fail the test, not the runner). */
export async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: not settled within ${ms} ms`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}
