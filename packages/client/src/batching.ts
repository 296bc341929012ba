/**
 * Automatic batching: the calls issued in the same tick (or within `maxDelayMs`) go to the server as ONE batch RPC
 * (CheckAndReserveBatch / ReleaseBatch), and each caller's promise settles with its own answer or its own error.
 *
 * Per-call semantics are kept: each item has its own deadline and AbortSignal (an item that times out or is aborted
 * rejects on its own, as a single call would; the others keep waiting), a batch item's error is rethrown as the
 * ConnectError the single RPC would have thrown (same code, message and `x-error-reason`), so `toQuotaError` and the
 * failure policy treat it exactly like a single call. A failure of the batch RPC itself (unreachable, deadline)
 * rejects every item with it, and each caller applies its own failure policy.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { QuotaInputError } from "./errors.ts";

export interface BatchingOptions {
  /** The most items in one batch RPC, 1..1000 (default 100). A full batch is sent at once. */
  maxBatch?: number;
  /** How long the first item of a batch waits for more, in ms (default 0: the calls issued in the same tick, i.e.
   * before the event loop's next check phase, `setImmediate`). */
  maxDelayMs?: number;
}

export interface CallSettings {
  timeoutMs: number;
  signal?: AbortSignal;
  headers?: Record<string, string>;
}

/** One item's outcome in a batch answer: the response, or the status the single RPC would have answered. */
export type ItemResult<Res> = { response: Res } | { error: { code: number; message: string; reason: string } };

/** Sends one batch; rejects when the batch RPC itself fails. `timeoutMs` covers the longest item deadline. */
export type SendBatch<Req, Res> = (requests: Req[], call: { timeoutMs: number; signal: AbortSignal }) => Promise<ItemResult<Res>[]>;

interface Pending<Req, Res> {
  request: Req;
  deadlineAt: number;
  resolve(r: Res): void;
  reject(e: unknown): void;
  done: boolean;
  cleanup(): void;
}

export function checkBatchingOptions(field: string, o: BatchingOptions | true): Required<BatchingOptions> {
  const opts = o === true ? {} : o;
  if (opts === null || typeof opts !== "object") throw new QuotaInputError(field, "must be true or { maxBatch?, maxDelayMs? }");
  const maxBatch = opts.maxBatch ?? 100;
  const maxDelayMs = opts.maxDelayMs ?? 0;
  if (!Number.isSafeInteger(maxBatch) || maxBatch < 1 || maxBatch > 1000) throw new QuotaInputError(`${field}.maxBatch`, `must be an integer 1..1000, got ${String(maxBatch)}`);
  if (typeof maxDelayMs !== "number" || !Number.isFinite(maxDelayMs) || maxDelayMs < 0 || maxDelayMs > 1000) {
    throw new QuotaInputError(`${field}.maxDelayMs`, `must be a number of ms 0..1000, got ${String(maxDelayMs)}`);
  }
  return { maxBatch, maxDelayMs };
}

export class Batcher<Req, Res> {
  #queue: Pending<Req, Res>[] = [];
  #timer: { cancel(): void } | undefined;
  readonly #send: SendBatch<Req, Res>;
  readonly #maxBatch: number;
  readonly #maxDelayMs: number;
  /** Batch RPCs sent so far (for tests and metrics). */
  sent = 0;

  constructor(send: SendBatch<Req, Res>, options: Required<BatchingOptions>) {
    this.#send = send;
    this.#maxBatch = options.maxBatch;
    this.#maxDelayMs = options.maxDelayMs;
  }

  /** Queues one item; settles with its own answer or error. */
  submit(request: Req, call: CallSettings): Promise<Res> {
    return new Promise<Res>((resolve, reject) => {
      const { signal } = call;
      if (signal?.aborted) {
        reject(new ConnectError("the call was aborted", Code.Canceled));
        return;
      }
      const item: Pending<Req, Res> = {
        request,
        deadlineAt: Date.now() + call.timeoutMs,
        done: false,
        resolve: (r) => {
          if (item.done) return;
          item.done = true;
          item.cleanup();
          resolve(r);
        },
        reject: (e) => {
          if (item.done) return;
          item.done = true;
          item.cleanup();
          reject(e);
        },
        cleanup: () => {},
      };
      // This item's own deadline and signal, independent of the batch it travels in.
      const timer = setTimeout(() => item.reject(new ConnectError("the operation timed out", Code.DeadlineExceeded)), call.timeoutMs);
      const onAbort = () => item.reject(new ConnectError("the call was aborted", Code.Canceled));
      signal?.addEventListener("abort", onAbort, { once: true });
      item.cleanup = () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
      };
      this.#queue.push(item);
      if (this.#queue.length >= this.#maxBatch) this.#flush();
      else if (!this.#timer) this.#timer = this.#schedule();
    });
  }

  #schedule(): { cancel(): void } {
    if (this.#maxDelayMs === 0) {
      const h = setImmediate(() => this.#flush());
      return { cancel: () => clearImmediate(h) };
    }
    const h = setTimeout(() => this.#flush(), this.#maxDelayMs);
    return { cancel: () => clearTimeout(h) };
  }

  #flush(): void {
    this.#timer?.cancel();
    this.#timer = undefined;
    // Items already settled (timed out or aborted while queued) are not sent.
    const items = this.#queue.filter((i) => !i.done);
    this.#queue = [];
    if (items.length === 0) return;
    void this.#run(items);
  }

  async #run(items: Pending<Req, Res>[]): Promise<void> {
    this.sent++;
    const now = Date.now();
    const timeoutMs = Math.max(1, ...items.map((i) => i.deadlineAt - now));
    const abort = new AbortController();
    // When every item has settled on its own (deadline, signal), nobody waits for the batch any more.
    const watch = setInterval(() => {
      if (items.every((i) => i.done)) abort.abort();
    }, 50);
    watch.unref();
    try {
      const results = await this.#send(
        items.map((i) => i.request),
        { timeoutMs, signal: abort.signal },
      );
      if (results.length !== items.length) throw new ConnectError(`batch answered ${results.length} results for ${items.length} requests`, Code.Internal);
      results.forEach((r, n) => {
        const item = items[n]!;
        if ("response" in r) item.resolve(r.response);
        else item.reject(itemError(r.error));
      });
    } catch (e) {
      for (const i of items) i.reject(e);
    } finally {
      clearInterval(watch);
    }
  }
}

/** The ConnectError a single call would have thrown for this batch item's error. */
function itemError(e: { code: number; message: string; reason: string }): ConnectError {
  const code = e.code in Code && e.code !== 0 ? (e.code as Code) : Code.Unknown;
  const metadata = new Headers();
  if (e.reason) metadata.set("x-error-reason", e.reason);
  return new ConnectError(e.message, code, metadata);
}
