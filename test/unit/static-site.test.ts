/**
 * The dashboard's static file handler: only the files found at start-up, under the mount path, GET/HEAD only, a
 * strict CSP on every answer, content-hashed assets cached for good, ETag revalidation, and the optional
 * config.json for a page hosted away from the API.
 */
import * as http from "node:http";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { contentSecurityPolicy, staticSite, type StaticSite } from "../../src/transport/connect/static-site.ts";

describe("staticSite", () => {
  let dir: string;
  let base: string;
  let server: http.Server;
  let site: StaticSite;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "qa-site-"));
    mkdirSync(join(dir, "assets"));
    writeFileSync(join(dir, "index.html"), "<!doctype html><title>t</title>");
    writeFileSync(join(dir, "assets", "index-abc.js"), "console.log(1)");
    writeFileSync(join(dir, "secret.txt.bak"), "x");
    site = staticSite({ root: dir, connectSrc: ["https://api.example.com"], pageConfig: { apiBaseUrl: "https://api.example.com" } })!;
    server = http.createServer((req, res) => {
      if (!site(req, res)) {
        res.writeHead(418);
        res.end();
      }
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    await new Promise((r) => server.close(r));
    rmSync(dir, { recursive: true, force: true });
  });

  it("is absent when the folder has no index.html (API only)", () => {
    expect(staticSite({ root: join(dir, "assets") })).toBeUndefined();
    expect(staticSite({ root: join(dir, "missing") })).toBeUndefined();
  });

  it("serves index.html and assets with the CSP, types and caching", async () => {
    const page = await fetch(`${base}/dashboard/`);
    expect(page.status).toBe(200);
    expect(page.headers.get("content-type")).toBe("text/html; charset=utf-8");
    expect(page.headers.get("cache-control")).toBe("no-cache");
    expect(page.headers.get("content-security-policy")).toBe(
      "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self' https://api.example.com; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    );
    expect(page.headers.get("x-content-type-options")).toBe("nosniff");
    expect(await page.text()).toBe("<!doctype html><title>t</title>");
    const js = await fetch(`${base}/dashboard/assets/index-abc.js`);
    expect(js.headers.get("content-type")).toBe("text/javascript; charset=utf-8");
    expect(js.headers.get("cache-control")).toBe("public, max-age=31536000, immutable");
    const again = await fetch(`${base}/dashboard/assets/index-abc.js`, { headers: { "if-none-match": js.headers.get("etag")! } });
    expect(again.status).toBe(304);
    const head = await fetch(`${base}/dashboard/`, { method: "HEAD" });
    expect(head.status).toBe(200);
    expect(await head.text()).toBe("");
    expect(await (await fetch(`${base}/dashboard/config.json`)).json()).toEqual({ apiBaseUrl: "https://api.example.com" });
  });

  it("redirects / to the mount, 404s unknown paths (with the CSP), and leaves everything else alone", async () => {
    const root = await fetch(`${base}/`, { redirect: "manual" });
    expect([root.status, root.headers.get("location")]).toEqual([302, "/dashboard/"]);
    // Raw request paths (fetch would normalise the dots away): nothing outside the files found at start-up.
    const rawStatus = (path: string) =>
      new Promise<number>((resolve, reject) => http.get({ host: "127.0.0.1", port: new URL(base).port, path }, (r) => (r.resume(), resolve(r.statusCode!))).on("error", reject));
    for (const p of ["/dashboard/nope.js", "/dashboard/../index.html", "/dashboard/%2e%2e/index.html", "/dashboard/assets/../../etc/passwd", "/dashboard/secret.txt"]) {
      expect(await rawStatus(p), p).toBe(404);
    }
    const missing = await fetch(`${base}/dashboard/nope.js`);
    expect(missing.headers.get("content-security-policy")).toBe(contentSecurityPolicy(["https://api.example.com"]));
    expect((await fetch(`${base}/quota.v1.QuotaService/GetLimits`)).status).toBe(418); // not ours: the API answers it
    expect((await fetch(`${base}/dashboard/`, { method: "POST" })).status).toBe(418);
  });
});
