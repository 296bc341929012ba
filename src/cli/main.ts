/**
 * The `quota-authority` command.
 *
 *   serve [--demo]              start the service (embedded default without DATABASE_URL / REDIS_URL)
 *   migrate                     apply pending database migrations and exit
 *   plans apply -f FILE         validate a plans file and load it (create or replace the plans)
 *   plans validate -f FILE      validate only
 *
 * and the commands that call a running server over gRPC (remote.ts): plans diff, accounts, keys, subscriptions,
 * deposit, topup, limits, ledger list, check. `quota-authority COMMAND --help` describes each.
 */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
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
import { COMMANDS, runRemote } from "./remote.ts";

const LOCAL: Array<[string, string, string]> = [
  ["serve", "serve [--demo]", "start the service (--demo: seed a plan, an account, $25 and a key; print the key and the dashboard URL)"],
  ["migrate", "migrate", "apply database migrations (DATABASE_URL, or the embedded PGlite in QUOTA_DATA_DIR) and exit"],
  ["plans apply", "plans apply -f FILE", "validate a plans file and load it into the configured database"],
  ["plans validate", "plans validate -f FILE", "validate a plans file (errors name the field)"],
];

const NAMES = [...LOCAL.map(([, u]) => u), ...COMMANDS.map((c) => c.name + (c.usage ? ` ${c.usage}` : ""))];
const PAD = Math.max(...NAMES.map((n) => n.length)) + 2;
const USAGE = [
  "usage: quota-authority <command> [options]   (quota-authority <command> --help for its options)",
  "",
  "on this machine:",
  ...LOCAL.map(([, u, d]) => `  ${u.padEnd(PAD)}${d}`),
  "",
  "against a running server over gRPC (--server / QUOTA_SERVER, QUOTA_ADMIN_TOKEN / QUOTA_SERVICE_TOKEN, --json):",
  ...COMMANDS.map((c) => `  ${(c.name + (c.usage ? ` ${c.usage}` : "")).padEnd(PAD)}${c.summary}`),
].join("\n");

async function main(argv: string[]): Promise<number> {
  const remote = await runRemote(argv, { out: (s) => console.log(s), err: (s) => console.error(s), env: process.env });
  if (remote >= 0) return remote;
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: { demo: { type: "boolean", default: false }, file: { type: "string", short: "f" }, help: { type: "boolean", short: "h" } },
    });
  } catch (e) {
    console.error(`quota-authority: ${(e as Error).message} (see --help)`);
    return 2;
  }
  const { values, positionals } = parsed;
  const [command, sub] = positionals;
  const local = LOCAL.find(([name]) => name === command || name === `${command} ${sub}`);
  if (values.help) {
    console.log(local ? `usage: quota-authority ${local[1]}\n\n${local[2]}` : USAGE);
    return 0;
  }
  if (!command) {
    console.error(USAGE);
    return 2;
  }
  try {
    if (command === "serve") {
      let config = loadConfig(process.env, values.demo ? { demo: "true" } : {});
      // --demo without an origin allow-list: allow the dashboard this server serves (its own origin).
      if (config.demo && config.allowedOrigins.length === 0) {
        config = loadConfig(process.env, { demo: "true", allowedOrigins: demoOrigins(config.host, config.httpPort) });
      }
      const app = await startApp(config);
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
    console.error(`quota-authority: unknown command ${JSON.stringify(positionals.join(" "))}\n\n${USAGE}`);
    return 2;
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

const code = await main(process.argv.slice(2));
if (code >= 0) process.exitCode = code;
