/**
 * ChangeBus over Redis pub/sub: every replica drops its cached key resolutions for an account when any replica
 * changes it.
 *
 * The subscriber is its own connection (a subscribed connection can run nothing else). It subscribes each time it
 * becomes ready — at start and after every reconnect — instead of once while still connecting (with the offline
 * queue disabled that first attempt fails, and the replica would never hear a change). Messages published while it
 * was disconnected are lost (pub/sub is at-most-once), so after a reconnect every listener is told "*": each
 * replica drops its whole cache and reloads what it needs. Failures are logged, never swallowed.
 */
import { Redis } from "ioredis";
import type { ChangeBus } from "../../core/ports.ts";

export interface ChangeBusLog {
  warn(msg: string, err?: unknown): void;
  info?(msg: string): void;
}

export class RedisChangeBus implements ChangeBus {
  readonly #pub: Redis;
  readonly #sub: Redis;
  readonly #channel: string;
  readonly #listeners: Array<(accountId: string) => void> = [];
  readonly #log: ChangeBusLog;
  #subscribedOnce = false;
  #subscribed = false;
  #closed = false;

  constructor(pub: Redis, channel: string, log: ChangeBusLog = { warn: () => {} }) {
    this.#pub = pub;
    this.#channel = channel;
    this.#log = log;
    // ioredis' own resubscription is not relied on: it only repeats subscriptions that once succeeded.
    this.#sub = pub.duplicate({ enableOfflineQueue: true, autoResubscribe: false, maxRetriesPerRequest: null, connectionName: `${channel}:subscriber` });
    this.#sub.on("error", (e: Error) => this.#log.warn("change bus subscriber connection error", e));
    this.#sub.on("close", () => {
      this.#subscribed = false;
    });
    this.#sub.on("message", (_ch: string, accountId: string) => this.#emit(accountId));
    this.#sub.on("ready", () => void this.#subscribe());
  }

  /** True while the subscriber is subscribed (changes from other replicas arrive). */
  get subscribed(): boolean {
    return this.#subscribed;
  }

  async #subscribe(): Promise<void> {
    if (this.#closed) return;
    try {
      await this.#sub.subscribe(this.#channel);
    } catch (e) {
      this.#log.warn("change bus subscribe failed; retrying on the next reconnect", e);
      // Force a reconnect so the subscription is retried (the connection itself may be fine).
      if (!this.#closed) this.#sub.disconnect(true);
      return;
    }
    this.#subscribed = true;
    if (this.#subscribedOnce) {
      // Changes published while this replica was not subscribed were missed: drop every cached entry.
      this.#log.info?.("change bus resubscribed; cached keys dropped");
      this.#emit("*");
    }
    this.#subscribedOnce = true;
  }

  #emit(accountId: string): void {
    for (const l of this.#listeners) {
      try {
        l(accountId);
      } catch (e) {
        this.#log.warn("change bus listener failed", e);
      }
    }
  }

  async publish(accountId: string): Promise<void> {
    // Local listeners first: this replica must not answer from a stale cache even if Redis is down.
    this.#emit(accountId);
    try {
      await this.#pub.publish(this.#channel, accountId);
    } catch (e) {
      // The change is committed; other replicas pick it up when their entry goes stale (key cache TTL) or when
      // their subscriber reconnects (which drops everything).
      this.#log.warn(`change bus publish failed for ${accountId}; other replicas refresh within the key cache TTL`, e);
    }
  }

  subscribe(listener: (accountId: string) => void): void {
    this.#listeners.push(listener);
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#sub.disconnect();
  }
}
