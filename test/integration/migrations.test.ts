/** The migrations produce exactly the schema the entities describe, on real Postgres and on PGlite. */
import { describe, expect, it } from "vitest";
import { migrate, openOrm } from "../../src/store/db/orm.ts";
import { createTestDatabase } from "../support/app.ts";

describe("migrations", () => {
  it("on Postgres: apply cleanly, leave no schema diff, and are idempotent", async () => {
    const db = await createTestDatabase();
    const orm = await openOrm({ url: db.url });
    try {
      expect((await migrate(orm)).length).toBeGreaterThan(0);
      expect(await orm.schema.getUpdateSchemaSQL()).toBe("");
      expect(await migrate(orm)).toEqual([]);
    } finally {
      await orm.close();
      await db.drop();
    }
  });

  // PGlite boots a WebAssembly Postgres in-process: on a loaded machine that alone can take longer than the default
  // 30 s test timeout (no assertion is about time).
  it("on PGlite (the embedded default): apply cleanly and leave no schema diff", { timeout: 120_000 }, async () => {
    const orm = await openOrm({ dataDir: "memory://" });
    try {
      await migrate(orm);
      expect(await orm.schema.getUpdateSchemaSQL()).toBe("");
    } finally {
      await orm.close();
    }
  });
});
