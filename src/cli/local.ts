/**
 * The commands that work on this machine (serve, migrate, plans apply|validate). Loaded on demand by main.ts, so
 * the commands that only call a server over gRPC do not pay for loading the server, MikroORM and PGlite.
 */
import { readFileSync } from "node:fs";
import { ConfigError, loadConfig } from "../config/config.ts";
import { QuotaError } from "../core/errors.ts";
import { parsePlansDocument } from "../core/plan.ts";
import { startApp } from "../main.ts";
import { MikroDatabase } from "../store/db/mikro-database.ts";
import { migrate, openOrm } from "../store/db/orm.ts";
import { AdminService } from "../core/admin-service.ts";
import { CapacitySync } from "../core/capacity.ts";
import { InMemoryCounterStore } from "../store/memory/in-memory-counter-store.ts";
import { LocalChangeBus } from "../store/memory/local-change-bus.ts";
import { systemClock } from "../core/ports.ts";
import type { QuotaService } from "../core/quota-service.ts";
import { demoOrigins, seedDemo } from "./demo.ts";
import { reportReady, superviseWorkers } from "./workers.ts";
import cluster from "node:cluster";
import pino from "pino";


export async function runLocal(values: { demo?: boolean; file?: string; workers?: string }, positionals: string[]): Promise<number> {
  const [command, sub] = positionals;
  try {
    if (command === "serve") {
      const flags = { ...(values.demo ? { demo: "true" } : {}), ...(values.workers !== undefined ? { workers: values.workers } : {}) };
      let config = loadConfig(process.env, flags);
      // --demo without an origin allow-list: allow the dashboard this server serves (its own origin).
      if (config.demo && config.allowedOrigins.length === 0) {
        config = loadConfig(process.env, { ...flags, allowedOrigins: demoOrigins(config.host, config.httpPort) });
      }
      if (config.workers > 1 && cluster.isPrimary) {
        return await superviseWorkers(config.workers, pino({ level: config.logLevel }));
      }
      const app = await startApp(config);
      reportReady();
      if (config.demo) console.log(await seedDemo(app));
      let signals = 0;
      const onSignal = (sig: string) => {
        if (signals++ > 0) process.exit(1);
        app.logger.info({ signal: sig }, "signal received");
        app.stop().then(
          () => process.exit(0),
          (e) => {
            app.logger.error({ err: e }, "shutdown failed");
            process.exit(1);
          },
        );
      };
      process.on("SIGTERM", onSignal);
      process.on("SIGINT", onSignal);
      return -1; // keep running
    }
    if (command === "migrate") {
      const config = loadConfig();
      const orm = await openOrm(config.databaseUrl ? { url: config.databaseUrl } : { dataDir: config.dataDir });
      const applied = await migrate(orm);
      console.log(applied.length ? `applied: ${applied.join(", ")}` : "no pending migrations");
      await orm.close();
      return 0;
    }
    if (command === "plans" && (sub === "apply" || sub === "validate")) {
      if (!values.file) {
        console.error("plans: -f FILE is required");
        return 2;
      }
      const text = readFileSync(values.file, "utf8");
      const plans = parsePlansDocument(text, values.file);
      if (sub === "validate") {
        console.log(`${values.file}: ${plans.length} valid plan(s): ${plans.map((p) => p.id).join(", ")}`);
        return 0;
      }
      const config = loadConfig();
      const orm = await openOrm(config.databaseUrl ? { url: config.databaseUrl } : { dataDir: config.dataDir });
      await migrate(orm);
      const db = new MikroDatabase(orm as never);
      const bus = new LocalChangeBus();
      // Only Postgres changes here: affected accounts are marked stale and the running servers' reconciler
      // rewrites their capacity in Redis and refreshes every replica's key cache (within QUOTA_RECONCILE_INTERVAL_MS).
      const capacity = new CapacitySync({ db, store: new InMemoryCounterStore(), clock: systemClock, bus });
      const admin = new AdminService({ db, clock: systemClock, bus, capacity, syncCapacity: false, quota: undefined as unknown as QuotaService });
      const stored = await admin.applyPlans(text, values.file);
      console.log(`applied ${stored.length} plan(s): ${stored.map((p) => `${p.id}@v${p.version}`).join(", ")}`);
      await db.close();
      return 0;
    }
    return -2;
  } catch (e) {
    if (e instanceof ConfigError) {
      console.error(e.message);
      return 2;
    }
    if (e instanceof QuotaError) {
      console.error(`error: ${e.message}`);
      return 1;
    }
    if ((e as NodeJS.ErrnoException).code === "ENOENT" && (e as NodeJS.ErrnoException).path) {
      console.error(`error: cannot read ${(e as NodeJS.ErrnoException).path}: no such file`);
      return 1;
    }
    console.error(`error: ${(e as Error).message ?? e}`);
    return 1;
  }
}
