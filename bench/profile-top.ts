/**
 * Summarizes V8 CPU profiles (`node --cpu-prof`, written by `npm run bench -- --profile`): self time by function
 * and by source file / package, as percentages of the sampled time (idle and GC shown separately).
 *
 *   node bench/profile-top.ts DIR_OR_FILE [--top 25] [--from S] [--to S]
 *
 * A profile covers the whole process (start-up, module loading, warm-up): a timeline of non-idle % per second is
 * printed first; --from/--to (seconds since the profile started) keep only the load window.
 */
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: Node[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
}

const { values, positionals } = parseArgs({ allowPositionals: true, options: { top: { type: "string", default: "25" }, from: { type: "string", default: "0" }, to: { type: "string", default: "1e9" } } });
const target = positionals[0];
if (!target) {
  console.error("usage: node bench/profile-top.ts DIR_OR_FILE [--top 25]");
  process.exit(2);
}
const files = statSync(target).isDirectory() ? readdirSync(target).filter((f) => f.endsWith(".cpuprofile")).map((f) => join(target, f)) : [target];
const top = Number(values.top);

for (const file of files) {
  const p = JSON.parse(readFileSync(file, "utf8")) as Profile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  const from = Number(values.from) * 1e6;
  const to = Number(values.to) * 1e6;
  const perSecond: Array<{ busy: number; all: number }> = [];
  let t = 0;
  for (let i = 0; i < p.samples.length; i++) {
    const dt = p.timeDeltas[i] ?? 0;
    t += dt;
    const sec = Math.floor(t / 1e6);
    const idle = byId.get(p.samples[i]!)?.callFrame.functionName === "(idle)";
    perSecond[sec] ??= { busy: 0, all: 0 };
    perSecond[sec]!.all += dt;
    if (!idle) perSecond[sec]!.busy += dt;
    if (t < from || t > to) continue;
    self.set(p.samples[i]!, (self.get(p.samples[i]!) ?? 0) + dt);
  }
  console.log(`\ntimeline (s: busy %): ${perSecond.map((x, i) => `${i}:${x ? Math.round((x.busy / Math.max(1, x.all)) * 100) : 0}`).join(" ")}`);
  let total = 0;
  const fn = new Map<string, number>();
  const where = new Map<string, number>();
  for (const [id, us] of self) {
    const n = byId.get(id)!;
    total += us;
    const name = n.callFrame.functionName || "(anonymous)";
    const url = n.callFrame.url.replace(/^file:\/\/.*?\/(node_modules|src|bench)\//, "$1/");
    const key = `${name}  ${url ? `${url}:${n.callFrame.lineNumber + 1}` : ""}`;
    fn.set(key, (fn.get(key) ?? 0) + us);
    const bucket = !url
      ? name.startsWith("(") ? name : "(native)"
      : url.startsWith("node:")
        ? url.split("/")[0]!.replace(/^node:internal.*/, "node:internal")
        : url.startsWith("node_modules/")
          ? url.split("/").slice(0, url.startsWith("node_modules/@") ? 3 : 2).join("/")
          : url;
    where.set(bucket, (where.get(bucket) ?? 0) + us);
  }
  const pct = (us: number) => `${((us / total) * 100).toFixed(1).padStart(5)}%`;
  console.log(`\n## ${file}: ${(total / 1e6).toFixed(1)} s sampled`);
  console.log("\nself time by file / package:");
  for (const [k, v] of [...where].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`${pct(v)}  ${k}`);
  console.log("\nself time by function:");
  for (const [k, v] of [...fn].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`${pct(v)}  ${k}`);
}
