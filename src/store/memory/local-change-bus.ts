/** ChangeBus for one process (the embedded default): listeners are called synchronously. */
import type { ChangeBus } from "../../core/ports.ts";

export class LocalChangeBus implements ChangeBus {
  readonly #listeners: Array<(accountId: string) => void> = [];
  async publish(accountId: string): Promise<void> {
    for (const l of this.#listeners) l(accountId);
  }
  subscribe(listener: (accountId: string) => void): void {
    this.#listeners.push(listener);
  }
  async close(): Promise<void> {}
}
