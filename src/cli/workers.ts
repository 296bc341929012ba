/**
 * `serve` with QUOTA_WORKERS (or --workers) N > 1: the primary process forks N workers with node:cluster; each runs
 * the whole server (startApp) with its own Redis and Postgres connections, and they share the gRPC and HTTP ports
 * (the primary accepts connections and hands them out round-robin, so one HTTP/2 connection stays on one worker).
 *
 * - Start: the first worker starts alone (it applies migrations and the plans file), the others once it is ready, so
 *   they never race on migrations.
 * - SIGTERM / SIGINT to the primary: forwarded to every worker, each drains and stops gracefully (main.ts); the
 *   primary exits 0 once all exited 0, else 1. A second signal kills the workers and exits 1.
 * - A worker that dies on its own (or never becomes ready) stops the others and the primary exits 1: the process
 *   supervisor (systemd, Kubernetes) restarts the whole set, as it would a single process.
 */
import cluster, { type Worker } from "node:cluster";
import type { Logger } from "pino";

/** Message a worker sends the primary once its ports are bound. */
export const READY_MESSAGE = "quota-authority:ready";

/** Tells the primary this worker serves (no-op outside a cluster). */
export function reportReady(): void {
  if (cluster.isWorker && process.send) process.send(READY_MESSAGE);
}

/** Runs the primary; resolves with the exit code once every worker has exited. */
export function superviseWorkers(count: number, logger: Logger): Promise<number> {
  return new Promise((resolve) => {
    const workers = new Set<Worker>();
    let stopping = false;
    let failed = false;
    let signals = 0;

    const stopAll = (why: string) => {
      if (stopping) return;
      stopping = true;
      logger.info({ why, workers: workers.size }, "stopping workers");
      for (const w of workers) w.process.kill("SIGTERM");
      if (workers.size === 0) resolve(failed ? 1 : 0);
    };

    const fork = (index: number): Promise<void> =>
      new Promise((ready) => {
        const w = cluster.fork({ QUOTA_WORKER_INDEX: String(index) });
        workers.add(w);
        let isReady = false;
        w.on("message", (m: unknown) => {
          if (m === READY_MESSAGE && !isReady) {
            isReady = true;
            ready();
          }
        });
        w.once("exit", (code, signal) => {
          workers.delete(w);
          // Stopped by our SIGTERM before it served (still starting): it had nothing to drain, that is a clean stop.
          const clean = code === 0 || (stopping && !isReady && signal === "SIGTERM");
          if (!stopping || !clean) logger[clean ? "info" : "error"]({ worker: index, pid: w.process.pid, code, signal }, "worker exited");
          if (!clean) failed = true;
          if (!isReady) ready(); // never became ready: let the start sequence go on to see `stopping`
          if (!stopping) {
            failed = true;
            stopAll(`worker ${index} exited on its own`);
          }
          if (workers.size === 0 && stopping) resolve(failed ? 1 : 0);
        });
      });

    const onSignal = (sig: NodeJS.Signals) => {
      if (signals++ > 0) {
        for (const w of workers) w.process.kill("SIGKILL");
        failed = true;
        return;
      }
      stopAll(`signal ${sig}`);
    };
    process.on("SIGTERM", onSignal);
    process.on("SIGINT", onSignal);

    void (async () => {
      await fork(1);
      if (stopping) return;
      await Promise.all(Array.from({ length: count - 1 }, (_, i) => fork(i + 2)));
      if (!stopping) logger.info({ workers: count, pids: [...workers].map((w) => w.process.pid) }, "all workers serving");
    })();
  });
}
