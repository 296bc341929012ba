/** Every migration, in order. Listed explicitly: no file globbing, no TypeScript loader. */
import { Migration20261122125048_initial } from "./migrations/Migration20261122125048_initial.ts";
import { Migration20261122125854_wallet_spent_posted } from "./migrations/Migration20261122125854_wallet_spent_posted.ts";

export const migrationsList = [Migration20261122125048_initial, Migration20261122125854_wallet_spent_posted];
