/**
 * Memory readings for tests of what the code keeps alive. `gc` is V8's, exposed at run time (vitest's workers are not
 * started with --expose-gc).
 */
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";

setFlagsFromString("--expose-gc");
export const gc = runInNewContext("gc") as () => void;

/** A memory figure once collected garbage is gone. A full collection frees unreachable buffers, but their backing
 * stores are released by V8 on a background thread, after gc() returns: on a loaded machine (the suite's parallel
 * files) a reading taken at once still counts megabytes of garbage. So: collect, let the sweeper run, and read again
 * until the figure stops falling. What is reachable (what a test looks for) is never released. */
export async function settled(read: (m: NodeJS.MemoryUsage) => number): Promise<number> {
  let last = Number.POSITIVE_INFINITY;
  for (let i = 0; i < 50; i++) {
    gc();
    await new Promise((r) => setTimeout(r, 10));
    const now = read(process.memoryUsage());
    if (now >= last) return now;
    last = now;
  }
  return last;
}
