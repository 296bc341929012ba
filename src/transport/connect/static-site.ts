/**
 * Serves the built dashboard (web/dist) on the HTTP port under a mount path (default /dashboard/), with a strict
 * Content-Security-Policy: scripts, styles and calls from this origin only (plus the API origins named in
 * `connectSrc` when a page is hosted away from the API), nothing inline, no frames, no plugins, no base or form
 * targets. The files are read once at start-up (a few kB): a request never touches the disk, and a path outside
 * the folder cannot be asked for because only the files found at start-up exist.
 */
import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import type * as http from "node:http";
import { join, relative, sep } from "node:path";

export interface StaticSiteOptions {
  /** The folder with index.html and assets/ (web/dist). */
  root: string;
  /** Where it is served, with leading and trailing slash (default "/dashboard/"). */
  mount?: string;
  /** Extra origins the page may call (its API base when the page is hosted elsewhere). */
  connectSrc?: readonly string[];
  /** Served as `<mount>config.json` when set (the page reads `apiBaseUrl`, `refreshSeconds` from it). */
  pageConfig?: { apiBaseUrl?: string; refreshSeconds?: number };
}

/** Answers GET/HEAD for the site and returns true, or returns false for every other request. */
export type StaticSite = (req: http.IncomingMessage, res: http.ServerResponse) => boolean;

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
  ".txt": "text/plain; charset=utf-8",
};

interface File {
  body: Buffer;
  type: string;
  etag: string;
  immutable: boolean;
}

export function contentSecurityPolicy(connectSrc: readonly string[] = []): string {
  return [
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    ["connect-src 'self'", ...connectSrc].join(" "),
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join("; ");
}

function walk(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? walk(p) : [p];
  });
}

/** Undefined when `root` has no index.html (the dashboard was not built): the port then serves the API only. */
export function staticSite(opts: StaticSiteOptions): StaticSite | undefined {
  if (!existsSync(join(opts.root, "index.html"))) return undefined;
  const mount = opts.mount ?? "/dashboard/";
  const files = new Map<string, File>();
  for (const path of walk(opts.root)) {
    const rel = relative(opts.root, path).split(sep).join("/");
    const body = readFileSync(path);
    const ext = rel.slice(rel.lastIndexOf("."));
    files.set(rel, {
      body,
      type: TYPES[ext] ?? "application/octet-stream",
      etag: `"${createHash("sha256").update(body).digest("base64url").slice(0, 22)}"`,
      // Vite names every asset by its content hash: cache them for good; index.html always revalidates.
      immutable: rel.startsWith("assets/"),
    });
  }
  if (opts.pageConfig) {
    const body = Buffer.from(JSON.stringify(opts.pageConfig));
    files.set("config.json", { body, type: TYPES[".json"]!, etag: `"${createHash("sha256").update(body).digest("base64url").slice(0, 22)}"`, immutable: false });
  }
  const csp = contentSecurityPolicy(opts.connectSrc);

  return (req, res) => {
    if (req.method !== "GET" && req.method !== "HEAD") return false;
    const path = (req.url ?? "/").split("?")[0]!;
    if (mount !== "/" && (path === "/" || path === mount.slice(0, -1))) {
      res.writeHead(302, { location: mount, "content-length": "0" });
      res.end();
      return true;
    }
    if (!path.startsWith(mount)) return false;
    const rel = path.slice(mount.length) || "index.html";
    const file = files.get(rel);
    const headers: http.OutgoingHttpHeaders = {
      "content-security-policy": csp,
      "x-content-type-options": "nosniff",
      "referrer-policy": "no-referrer",
      "x-frame-options": "DENY",
      "cross-origin-opener-policy": "same-origin",
    };
    if (!file) {
      res.writeHead(404, { ...headers, "content-type": "text/plain; charset=utf-8" });
      res.end(req.method === "HEAD" ? undefined : "not found\n");
      return true;
    }
    headers["content-type"] = file.type;
    headers.etag = file.etag;
    headers["cache-control"] = file.immutable ? "public, max-age=31536000, immutable" : "no-cache";
    if (req.headers["if-none-match"] === file.etag) {
      res.writeHead(304, headers);
      res.end();
      return true;
    }
    headers["content-length"] = String(file.body.length);
    res.writeHead(200, headers);
    res.end(req.method === "HEAD" ? undefined : file.body);
    return true;
  };
}
