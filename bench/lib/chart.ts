/**
 * PNG charts with gnuplot (Debian package gnuplot-nox, installed with apt-get when running as root): latency
 * against offered load (open loop, floor vs our server) and the cost curve (throughput and p99 by accounts, one
 * line per limits-per-call). Returns the files written; none when gnuplot is missing.
 */
import { spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { ensureTool } from "./env.ts";

interface Point {
  opsPerSecond: number;
  latencyMs: { p50: number; p99: number };
}
interface Report {
  openLoop?: { accounts: number; points: Array<Point & { target: string; rate: number }> };
  costCurve?: Array<Point & { accounts: number; limits: number }>;
}

export function drawCharts(report: Report, dir: string, name: string): string[] {
  if (!report.openLoop && !report.costCurve) return [];
  if (!ensureTool("gnuplot", "gnuplot-nox")) return [];
  const written: string[] = [];
  const dat = (file: string, rows: string[]) => writeFileSync(`${dir}.${file}`, rows.join("\n") + "\n");
  const plot = (script: string) => spawnSync("gnuplot", [], { input: script, encoding: "utf8" });

  if (report.openLoop?.points.length) {
    const targets = ["z", "c", "d"].filter((t) => report.openLoop!.points.some((p) => p.target === t));
    for (const t of targets) dat(`open-${t}.dat`, report.openLoop.points.filter((p) => p.target === t).map((p) => `${p.rate} ${p.opsPerSecond} ${p.latencyMs.p50} ${p.latencyMs.p99}`));
    const png = `${name}-latency-vs-load.png`;
    plot(`set terminal pngcairo size 900,520 font ",10"
set output "${dir}${png}"
set title "Open loop over ${report.openLoop.accounts} accounts: latency against offered load (3 limits)"
set xlabel "offered load (CheckAndReserve/s)"
set ylabel "latency (ms)"
set logscale y
set grid
set key top left
plot ${targets
      .flatMap((t) => {
        const who = t === "z" ? "bare http2 echo (z)" : t === "c" ? "floor (c)" : "our server (d)";
        return [`"${dir}.open-${t}.dat" using 1:3 with linespoints title "${who} p50"`, `"${dir}.open-${t}.dat" using 1:4 with linespoints title "${who} p99"`];
      })
      .join(", \\\n     ")}
`);
    written.push(png);
  }
  if (report.costCurve?.length) {
    const limits = [...new Set(report.costCurve.map((p) => p.limits))];
    for (const l of limits) dat(`curve-${l}.dat`, report.costCurve.filter((p) => p.limits === l).map((p) => `${p.accounts} ${p.opsPerSecond} ${p.latencyMs.p99}`));
    const png = `${name}-cost-curve.png`;
    const lines = (col: number) => limits.map((l) => `"${dir}.curve-${l}.dat" using 1:${col} with linespoints title "${l} limit${l > 1 ? "s" : ""}"`).join(", ");
    plot(`set terminal pngcairo size 900,760 font ",10"
set output "${dir}${png}"
set multiplot layout 2,1 title "Cost curve: our server, closed loop (CheckAndReserve)"
set logscale x
set grid
set xlabel "accounts (one key each)"
set ylabel "calls/s"
set yrange [0:*]
plot ${lines(2)}
set ylabel "p99 (ms)"
plot ${lines(3)}
unset multiplot
`);
    written.push(png);
  }
  return written;
}
