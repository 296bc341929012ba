/**
 * Opens the source-of-truth database: real Postgres when a URL is given, otherwise PGlite (Postgres compiled to
 * WebAssembly, in-process) with its data in a local folder — the embedded default.
 */
import { mkdirSync } from "node:fs";
import { resolve } from "node:path";
import type { MikroORM as CoreORM } from "@mikro-orm/core";
import { Migrator } from "@mikro-orm/migrations";
import { entities } from "./entities.ts";
import { migrationsList } from "./migrations.ts";

export interface OrmOptions {
  /** postgresql://... ; absent = embedded PGlite. */
  url?: string;
  /** PGlite data folder ("memory://" for a throw-away in-memory database). */
  dataDir?: string;
  /**
   * Postgres: a connection (or a wait for a pooled one) fails after connectTimeoutMs; a statement is cancelled by the
   * server after statementTimeoutMs and abandoned by the client shortly after (a black-holed connection never
   * answers, so the server-side timeout alone would not bound it).
   */
  connectTimeoutMs?: number;
  statementTimeoutMs?: number;
  /** Connection pool size for Postgres. */
  poolSize?: number;
  debug?: boolean;
}

export async function openOrm(options: OrmOptions): Promise<CoreORM> {
  const common = {
    entities,
    extensions: [Migrator],
    migrations: { migrationsList, snapshot: false, silent: true, transactional: true, allOrNothing: true },
    debug: options.debug ?? false,
  };
  if (options.url) {
    const { MikroORM } = await import("@mikro-orm/postgresql");
    return (await MikroORM.init({
      ...common,
      clientUrl: options.url,
      pool: { min: 0, max: options.poolSize ?? 10 },
      driverOptions: {
        connectionTimeoutMillis: options.connectTimeoutMs ?? 5_000,
        statement_timeout: options.statementTimeoutMs ?? 5_000,
        query_timeout: (options.statementTimeoutMs ?? 5_000) + 500,
        keepAlive: true,
      },
    })) as unknown as CoreORM;
  }
  const { MikroORM } = await import("@mikro-orm/pglite");
  const dir = options.dataDir ?? "memory://";
  if (!dir.startsWith("memory://")) mkdirSync(resolve(dir), { recursive: true });
  return (await MikroORM.init({ ...common, dbName: dir.startsWith("memory://") ? dir : resolve(dir) })) as unknown as CoreORM;
}

/** Applies pending migrations; returns their names. */
export async function migrate(orm: CoreORM): Promise<string[]> {
  const done = await (orm as unknown as { migrator: { up(): Promise<Array<{ name: string }>> } }).migrator.up();
  return done.map((m) => m.name);
}
