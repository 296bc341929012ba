/**
 * ChangeBus over Redis pub/sub: every replica drops its cached key resolutions for an account when any replica
 * changes it. Delivery is at-most-once; the key cache TTL bounds staleness if a message is lost.
 */
import { Redis } from "ioredis";
import type { ChangeBus } from "../../core/ports.ts";

export class RedisChangeBus implements ChangeBus {
  readonly #pub: Redis;
  readonly #sub: Redis;
  readonly #channel: string;
  readonly #listeners: Array<(accountId: string) => void> = [];

  constructor(pub: Redis, channel: string) {
    this.#pub = pub;
    this.#sub = pub.duplicate();
    this.#channel = channel;
    // Errors are reported by the main connection; the subscriber just reconnects.
    this.#sub.on("error", () => {});
    this.#sub.on("message", (_ch: string, accountId: string) => {
      for (const l of this.#listeners) l(accountId);
    });
    this.#sub.subscribe(channel).catch(() => {});
  }

  async publish(accountId: string): Promise<void> {
    // Local listeners first: this replica must not answer from a stale cache even if Redis is down.
    for (const l of this.#listeners) l(accountId);
    await this.#pub.publish(this.#channel, accountId);
  }

  subscribe(listener: (accountId: string) => void): void {
    this.#listeners.push(listener);
  }

  async close(): Promise<void> {
    this.#sub.disconnect();
  }
}
