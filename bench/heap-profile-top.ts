/**
 * Summarizes a V8 sampling allocation profile (`bench/hot-path.ts --heap-profile FILE`, or a `.heapprofile` of
 * `node --heap-prof`): the bytes allocated by function and by source file / package, as percentages of the total
 * and, with --calls N, as bytes per call. A built-in (no source file: `split`, `Promise`, `flat` ...) is shown with
 * the function that called it.
 *
 *   node bench/heap-profile-top.ts FILE [--top 30] [--calls N]
 */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

interface Node {
  callFrame: { functionName: string; url: string; lineNumber: number };
  selfSize: number;
  children: Node[];
}

const { values, positionals } = parseArgs({ allowPositionals: true, options: { top: { type: "string", default: "30" }, calls: { type: "string" } } });
const file = positionals[0];
if (!file) {
  console.error("usage: node bench/heap-profile-top.ts FILE [--top 30] [--calls N]");
  process.exit(2);
}
const { head } = JSON.parse(readFileSync(file, "utf8")) as { head: Node };
const byFunction = new Map<string, number>();
const byFile = new Map<string, number>();
let total = 0;
const add = (m: Map<string, number>, k: string, n: number) => m.set(k, (m.get(k) ?? 0) + n);
const where = (url: string) => url.replace(/^file:\/\/.*?\/(node_modules\/|src\/|bench\/)/, "$1");
const label = ({ functionName, url, lineNumber }: Node["callFrame"]) => `${functionName || "(anonymous)"} ${where(url)}:${lineNumber + 1}`;
for (const stack: Array<[Node, Node | undefined]> = [[head, undefined]]; stack.length > 0; ) {
  const [n, parent] = stack.pop()!;
  for (const c of n.children) stack.push([c, n]);
  if (n.selfSize === 0) continue;
  const url = where(n.callFrame.url);
  total += n.selfSize;
  add(byFunction, url || !parent ? label(n.callFrame) : `${n.callFrame.functionName} <- ${label(parent.callFrame)}`, n.selfSize);
  const pkg = url.replace(/^.*?node_modules\//, "node_modules/");
  add(byFile, pkg.startsWith("node_modules/") ? pkg.split("/").slice(0, pkg.startsWith("node_modules/@") ? 3 : 2).join("/") : url || "(native)", n.selfSize);
}
const calls = values.calls ? Number(values.calls) : undefined;
const row = (k: string, n: number) =>
  `${((100 * n) / total).toFixed(1).padStart(5)} %  ${calls ? `${Math.round(n / calls).toString().padStart(6)} B/call  ` : ""}${k}`;
console.log(`total ${total} bytes sampled${calls ? ` (${Math.round(total / calls)} per call)` : ""}\n\nby function`);
for (const [k, n] of [...byFunction].sort((a, b) => b[1] - a[1]).slice(0, Number(values.top))) console.log(row(k, n));
console.log("\nby file / package");
for (const [k, n] of [...byFile].sort((a, b) => b[1] - a[1]).slice(0, Number(values.top))) console.log(row(k, n));
