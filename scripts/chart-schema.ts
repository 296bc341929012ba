/**
 * Generates charts/quota-authority/values.schema.json (JSON Schema draft-07) and the values table of
 * charts/quota-authority/README.md from one source: the annotated values.yaml.
 *
 *   # -- description (may continue on the following comment lines)
 *   # @schema {"enum": [...], "minimum": 1, ...}     JSON-schema keywords merged over the inferred ones
 *
 * Types come from the defaults; every mapping with keys is closed (additionalProperties: false), so a typo'd value
 * fails `helm template/install`. A mapping annotated with `additionalProperties` is free-form (its defaults are
 * not turned into properties).
 *
 *   sh scripts/node scripts/chart-schema.ts            write both files
 *   sh scripts/node scripts/chart-schema.ts --check    exit 1 when either is stale
 */
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { isMap, isScalar, isSeq, parseDocument, type Node, type Pair, type YAMLMap } from "yaml";

const CHART = join(dirname(fileURLToPath(import.meta.url)), "../charts/quota-authority");
type Schema = Record<string, unknown>;

interface Annotation { description: string; schema: Schema }

function parseComment(comment: string | null | undefined, where: string): Annotation {
  if (!comment) return { description: "", schema: {} };
  const lines = comment.split("\n").map((l) => l.replace(/^ /, ""));
  let start = lines.findLastIndex((l) => l.startsWith("-- "));
  if (start < 0) start = lines.findLastIndex((l) => l.trim() === "") + 1;
  const description: string[] = [];
  let schema: Schema = {};
  for (const line of lines.slice(start)) {
    if (line.startsWith("@schema ")) {
      try {
        schema = { ...schema, ...(JSON.parse(line.slice(8)) as Schema) };
      } catch (e) {
        throw new Error(`${where}: bad @schema annotation: ${(e as Error).message}`);
      }
    } else if (!Object.keys(schema).length) {
      description.push(line.replace(/^-- /, ""));
    }
  }
  return { description: description.join(" ").replace(/\s+/g, " ").trim(), schema };
}

function inferred(node: Node | null, path: string): Schema {
  if (isMap(node)) return { type: "object" };
  if (isSeq(node)) return { type: "array" };
  if (isScalar(node)) {
    const v = node.value;
    if (typeof v === "string") return { type: "string" };
    if (typeof v === "boolean") return { type: "boolean" };
    if (typeof v === "number") return { type: Number.isInteger(v) ? "integer" : "number" };
    if (v === null) return {};
  }
  throw new Error(`${path}: cannot infer a type`);
}

export interface Row { key: string; type: string; default: string; description: string }

function walk(map: YAMLMap, prefix: string, rows: Row[], firstComment: string | null | undefined): Schema {
  const properties: Record<string, Schema> = {};
  map.items.forEach((pair: Pair, i) => {
    const keyNode = pair.key as Node;
    const key = String(isScalar(keyNode) ? keyNode.value : keyNode);
    const path = prefix ? `${prefix}.${key}` : key;
    const a = parseComment(i === 0 ? [firstComment, keyNode.commentBefore].filter(Boolean).join("\n") : keyNode.commentBefore, path);
    const value = pair.value as Node | null;
    let s: Schema;
    if (isMap(value) && value.items.length && !("additionalProperties" in a.schema)) {
      s = walk(value, path, rows, value.commentBefore);
    } else {
      s = inferred(value, path);
      if (a.schema.type === undefined && s.type === undefined) throw new Error(`${path}: null default needs @schema {"type": ...}`);
      const shown = value && "toJSON" in value ? JSON.stringify((value as { toJSON(): unknown }).toJSON()) : "null";
      rows.push({ key: path, type: "", default: shown, description: a.description });
    }
    s = { ...s, ...a.schema };
    if (a.description) s = { description: a.description, ...s };
    const row = rows.find((r) => r.key === path);
    if (row) row.type = ([] as unknown[]).concat(s.type ?? (s.anyOf ? "string" : "any")).join(" \\| ");
    properties[key] = s;
  });
  return { type: "object", additionalProperties: false, properties };
}

export function generate(): { schema: string; readme: string } {
  const doc = parseDocument(readFileSync(join(CHART, "values.yaml"), "utf8"));
  if (doc.errors.length) throw new Error(`values.yaml: ${doc.errors[0]!.message}`);
  if (!isMap(doc.contents)) throw new Error("values.yaml: not a mapping");
  const rows: Row[] = [];
  const root = walk(doc.contents, "", rows, doc.contents.commentBefore);
  // Helm passes a parent chart's `global` values to every subchart (the sidecar example uses this chart as one).
  (root.properties as Record<string, Schema>).global = { type: "object", description: "Global values from a parent chart." };
  const schema = { $schema: "http://json-schema.org/draft-07/schema#", title: "quota-authority chart values", ...root };
  const table = [
    "| Key | Type | Default | Description |",
    "| --- | --- | --- | --- |",
    ...rows.map((r) => `| \`${r.key}\` | ${r.type} | \`${r.default.replace(/\|/g, "\\|")}\` | ${r.description.replace(/\|/g, "\\|")} |`),
  ].join("\n");
  const readmePath = join(CHART, "README.md");
  const readme = readFileSync(readmePath, "utf8");
  const start = "<!-- values:start -->";
  const end = "<!-- values:end -->";
  const a = readme.indexOf(start);
  const b = readme.indexOf(end);
  if (a < 0 || b < a) throw new Error(`${readmePath}: missing ${start} / ${end} markers`);
  return {
    schema: `${JSON.stringify(schema, null, 2)}\n`,
    readme: `${readme.slice(0, a + start.length)}\n${table}\n${readme.slice(b)}`,
  };
}

export const SCHEMA_FILE = join(CHART, "values.schema.json");
export const README_FILE = join(CHART, "README.md");

if (import.meta.url === `file://${process.argv[1]}`) {
  const out = generate();
  const stale = [
    [SCHEMA_FILE, out.schema],
    [README_FILE, out.readme],
  ].filter(([file, text]) => {
    try {
      return readFileSync(file!, "utf8") !== text;
    } catch {
      return true;
    }
  });
  if (process.argv.includes("--check")) {
    for (const [file] of stale) console.error(`stale: ${file} (run sh scripts/node scripts/chart-schema.ts)`);
    process.exit(stale.length ? 1 : 0);
  }
  for (const [file, text] of stale) writeFileSync(file!, text!);
  console.log(stale.length ? `wrote ${stale.map(([f]) => f).join(", ")}` : "up to date");
}
