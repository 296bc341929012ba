/** Every migration, in order. Listed explicitly: no file globbing, no TypeScript loader. */
import { Migration20261122125048_initial } from "./migrations/Migration20261122125048_initial.ts";

export const migrationsList = [Migration20261122125048_initial];
