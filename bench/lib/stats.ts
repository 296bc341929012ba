/** Latency summaries and per-process CPU from /proc (Linux). */
import { readFileSync } from "node:fs";

export interface Latency {
  p50: number;
  p90: number;
  p99: number;
  p999: number;
  max: number;
  mean: number;
}

/** Percentiles in milliseconds of the first `n` samples (sorted in place). */
export function summarize(samples: Float64Array, n: number): Latency {
  if (n === 0) return { p50: 0, p90: 0, p99: 0, p999: 0, max: 0, mean: 0 };
  const s = samples.subarray(0, n).sort();
  const at = (p: number) => round3(s[Math.min(n - 1, Math.floor(p * n))]!);
  let sum = 0;
  for (let i = 0; i < n; i++) sum += s[i]!;
  return { p50: at(0.5), p90: at(0.9), p99: at(0.99), p999: at(0.999), max: round3(s[n - 1]!), mean: round3(sum / n) };
}

export function round3(x: number): number {
  return Math.round(x * 1000) / 1000;
}

const TICKS_PER_SECOND = 100; // USER_HZ on Linux x86-64

/** utime + stime of a process, in seconds (fields 14 and 15 of /proc/<pid>/stat). */
export function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // The command name (field 2) may contain spaces; it is the text between the first "(" and the last ")".
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND;
  } catch {
    return Number.NaN;
  }
}

/** Machine-wide busy fraction between two reads of /proc/stat (1 = every core busy). */
export function machineCpu(): { busy: number; total: number } {
  const line = readFileSync("/proc/stat", "utf8").split("\n")[0]!.split(/\s+/).slice(1).map(Number);
  const idle = (line[3] ?? 0) + (line[4] ?? 0);
  const total = line.reduce((a, b) => a + b, 0);
  return { busy: total - idle, total };
}

export function loadAverage(): number[] {
  return readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).map(Number);
}
