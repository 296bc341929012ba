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
import { parseArgs } from "node:util";
import { COMMANDS, runRemote } from "./remote.ts";

const LOCAL: Array<[string, string, string]> = [
  ["serve", "serve [--demo] [--workers N]", "start the service (--demo: seed a plan, an account, $25 and a key; print the key and the dashboard URL; --workers N: N processes sharing the ports, needs Postgres and Redis)"],
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
      options: { demo: { type: "boolean", default: false }, workers: { type: "string" }, file: { type: "string", short: "f" }, help: { type: "boolean", short: "h" } },
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
  const { runLocal } = await import("./local.ts");
  const code = await runLocal(values, positionals);
  if (code === -2) {
    console.error(`quota-authority: unknown command ${JSON.stringify(positionals.join(" "))}\n\n${USAGE}`);
    return 2;
  }
  return code;
}

const code = await main(process.argv.slice(2));
if (code >= 0) process.exitCode = code;
