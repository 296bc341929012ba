/**
 * The usage dashboard in headless Chromium (Debian's chromium, driven by playwright-core) against the real server
 * process started with --demo: served at /dashboard/ under a strict CSP, it takes the demo key, shows the bars,
 * buys a top-up from the wallet and shows the new limit and balance; served from a second origin that is in
 * QUOTA_ALLOWED_ORIGINS it works the same (CORS); from an origin that is not, and for methods browsers may not
 * call, the calls fail and the page says why. Screenshots go to test/artifacts/ (git-ignored).
 */
import * as http from "node:http";
import { mkdirSync } from "node:fs";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Browser, Page } from "playwright-core";
import { Decision } from "../../src/gen/quota/v1/types_pb.ts";
import { contentSecurityPolicy, staticSite } from "../../src/transport/connect/static-site.ts";
import { launchChromium } from "../support/browser.ts";
import { clients } from "../support/clients.ts";
import { REPO_ROOT, ServerProcess } from "../support/server-process.ts";

const ARTIFACTS = join(REPO_ROOT, "test/artifacts");
const DIST = join(REPO_ROOT, "web/dist");

/** A static host on its own origin serving web/dist, whose config.json points the page at `apiBase`. */
async function pageHost(apiBase: string): Promise<{ origin: string; close(): Promise<void> }> {
  const site = staticSite({ root: DIST, connectSrc: [apiBase], pageConfig: { apiBaseUrl: apiBase, refreshSeconds: 2 } });
  if (!site) throw new Error("web/dist is not built (npm run build:web)");
  const server = http.createServer((req, res) => {
    if (!site(req, res)) {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as AddressInfo;
  return { origin: `http://127.0.0.1:${port}`, close: () => new Promise((r) => server.close(() => r())) };
}

async function login(page: Page, url: string, apiKey: string): Promise<void> {
  await page.goto(url);
  await page.fill("#api-key", apiKey);
  await page.click("#login button[type=submit]");
}

/** The bar and numbers of one limit, as the page shows them. */
async function bar(page: Page, name: string) {
  const item = page.locator(`li.limit[data-limit="${name}"]`).first();
  const progress = item.locator("progress");
  return {
    max: await progress.getAttribute("max"),
    value: await progress.getAttribute("value"),
    used: await item.locator(".used").textContent(),
    total: await item.locator(".total").textContent(),
    remaining: await item.locator(".remaining").textContent(),
    resets: await item.locator("time.resets").getAttribute("datetime"),
    sources: await item.locator("li.source").allTextContents(),
  };
}

// One user journey against one `--demo` server (starting it per test would triple the file's time): each step reads
// the state the previous one left (the fresh demo's 5 requests and $25, then the purchase, then errors against that
// balance). So this file's tests keep their written order even when the suite is shuffled; it is the only such file.
describe("the dashboard in headless Chromium against the real server (--demo)", { shuffle: false }, () => {
  let server: ServerProcess;
  let browser: Browser;
  let apiKey: string;
  let allowedHost: Awaited<ReturnType<typeof pageHost>>;
  let deniedHost: Awaited<ReturnType<typeof pageHost>>;
  const env: Record<string, string> = {};

  beforeAll(async () => {
    mkdirSync(ARTIFACTS, { recursive: true });
    server = await ServerProcess.create({ args: ["--demo"], env });
    const apiBase = `http://127.0.0.1:${server.httpPort}`;
    allowedHost = await pageHost(apiBase);
    deniedHost = await pageHost(apiBase);
    // The server's own origin (the page it serves) and one other origin are allowed; deniedHost is not.
    env.QUOTA_ALLOWED_ORIGINS = `${apiBase},${allowedHost.origin}`;
    await server.start();
    // /readyz answers before the demo seeding has printed its key.
    for (const deadline = Date.now() + 30_000; !/API key \(shown once\)/.test(server.stdout.join("\n")) && Date.now() < deadline; ) {
      await new Promise((r) => setTimeout(r, 100));
    }
    const printed = server.stdout.join("\n");
    apiKey = /API key \(shown once\): (qa_\S+)/.exec(printed)?.[1] ?? "";
    expect(apiKey, server.output()).toMatch(/^qa_/);
    expect(printed).toContain(`Dashboard (paste the API key there): ${apiBase}/dashboard/`);
    browser = await launchChromium();
  }, 120_000);

  afterAll(async () => {
    await browser?.close();
    await allowedHost?.close();
    await deniedHost?.close();
    await server?.cleanup();
  });

  it("serves the page with a strict CSP and no inline script", async () => {
    const base = `http://127.0.0.1:${server.httpPort}`;
    const root = await fetch(`${base}/`, { redirect: "manual" });
    expect(root.status).toBe(302);
    expect(root.headers.get("location")).toBe("/dashboard/");
    const res = await fetch(`${base}/dashboard/`);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-security-policy")).toBe(contentSecurityPolicy());
    expect(res.headers.get("content-security-policy")).not.toMatch(/unsafe-inline|unsafe-eval/);
    const html = await res.text();
    expect(html).not.toMatch(/<script(?![^>]*\bsrc=)[^>]*>/); // every script has a src
    expect(html).not.toMatch(/\sstyle=|\son[a-z]+=/i);
    const script = /<script[^>]*src="\.\/(assets\/[^"]+\.js)"/.exec(html)?.[1];
    const js = await fetch(`${base}/dashboard/${script}`);
    expect(js.headers.get("content-type")).toMatch(/^text\/javascript/);
    expect(js.headers.get("cache-control")).toContain("immutable");
    expect((await fetch(`${base}/dashboard/../package.json`)).status).toBe(404);
  });

  it("takes the demo key, shows the bars, buys a top-up and shows the new limit and balance", async () => {
    const page = await browser.newPage();
    const violations: string[] = [];
    page.on("console", (m) => {
      if (/Content Security Policy|Refused to/i.test(m.text())) violations.push(m.text());
    });
    try {
      const url = `http://127.0.0.1:${server.httpPort}/dashboard/`;
      await login(page, url, apiKey);
      await page.waitForSelector("#dashboard:not([hidden])");
      expect(await page.locator("#login").isHidden()).toBe(true);
      await expect.poll(() => page.locator("h2.plan").textContent(), { timeout: 15_000 }).toBe("Demo (5 requests a day)");
      expect(await page.locator(".cycle").textContent()).toMatch(/Plan demo · active · cycle \d{4}-\d\d-\d\d \d\d:\d\d UTC → /);
      const before = await bar(page, "requests-daily");
      expect(before).toMatchObject({ max: "5", value: "0", used: "0", total: "5", remaining: "5" });
      expect(Date.parse(before.resets!)).toBeGreaterThan(Date.now());
      expect(before.sources).toEqual(["plan: 5"]);
      expect(await bar(page, "rps")).toMatchObject({ max: "10", total: "10" });
      expect(await page.locator('dd[data-wallet="prepaid"]').textContent()).toBe("25.00 USD");
      // The key is in memory only: not in the address, storage or cookies, and the field was cleared.
      expect(page.url()).toBe(url);
      expect(await page.evaluate("[localStorage.length, sessionStorage.length, document.cookie]")).toEqual([0, 0, ""]);
      expect(await page.inputValue("#api-key")).toBe("");

      // A call made by a backend shows up after the next refresh.
      const c = clients("grpc-js", server.ports);
      try {
        const r = await c.quota.checkAndReserve({ apiKey, product: "demo-api", method: "things.list" });
        expect(r.decision).toBe(Decision.ALLOWED);
      } finally {
        c.close();
      }
      await page.click("#refresh");
      await expect.poll(async () => (await bar(page, "requests-daily")).value, { timeout: 15_000 }).toBe("1");
      expect(await bar(page, "requests-daily")).toMatchObject({ used: "1", remaining: "4" });

      // Buy 100 requests from the wallet ($1.00).
      await page.fill("#buy-value", "100");
      await page.click("#buy-submit");
      await page.waitForSelector("#buy-result:not([hidden])");
      expect(await page.locator("#buy-new-limit").textContent()).toBe("105");
      expect(await page.locator("#buy-new-balance").textContent()).toBe("24.00 USD");
      expect(await page.locator("#buy-result").textContent()).toMatch(/^Bought 100 units\. New limit: 105\. Wallet balance: 24\.00 USD\. Transaction \S+\.$/);
      await expect.poll(async () => (await bar(page, "requests-daily")).max, { timeout: 15_000 }).toBe("105");
      const after = await bar(page, "requests-daily");
      expect(after).toMatchObject({ value: "1", used: "1", total: "105", remaining: "104" });
      expect(after.sources[0]).toBe("plan: 5");
      expect(after.sources[1]).toMatch(/^grant \S+: 100, expires \d{4}-\d\d-\d\d \d\d:\d\d UTC$/);
      expect(await page.locator('dd[data-wallet="prepaid"]').textContent()).toBe("24.00 USD");
      const grant = page.locator("#grants tbody tr");
      expect(await grant.count()).toBe(1);
      expect(await grant.locator("td").allTextContents()).toEqual(["requests-daily", "all products", "100", "topup", expect.stringMatching(/UTC \(in .+\)$/)]);
      await page.screenshot({ path: join(ARTIFACTS, "dashboard.png"), fullPage: true });

      // Errors in words: more than the wallet holds, and input that is not a number (refused before any call).
      await page.check('input[name="buy-by"][value="amount"]');
      await page.fill("#buy-value", "1000");
      await page.click("#buy-submit");
      await page.waitForSelector("#buy-error:not([hidden])");
      expect(await page.locator("#buy-error").textContent()).toMatch(/^Your wallet balance is too low for this purchase: insufficient wallet balance: 24\.00 USD available, 1000\.00 USD needed\.$/);
      await page.fill("#buy-value", "ten");
      await page.click("#buy-submit");
      expect(await page.locator("#buy-error").textContent()).toBe('Check the amount: "ten" is not an amount in dollars (like 2.50).');
      await page.screenshot({ path: join(ARTIFACTS, "dashboard-error.png"), fullPage: true });
      expect(await page.locator('dd[data-wallet="prepaid"]').textContent()).toBe("24.00 USD");
      expect(violations).toEqual([]);
    } finally {
      await page.close();
    }
  });

  it("works from another origin listed in QUOTA_ALLOWED_ORIGINS (CORS, config.json names the API)", async () => {
    const page = await browser.newPage();
    try {
      // A key the server does not know: said in words, nothing shown, the form stays.
      await login(page, `${allowedHost.origin}/dashboard/`, "qa_aaaaaaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb");
      await page.waitForSelector("#error:not([hidden])");
      expect(await page.locator("#error").textContent()).toBe("This API key is not known (check that it was copied whole): api key not found.");
      expect(await page.locator("#dashboard").isHidden()).toBe(true);
      await page.fill("#api-key", apiKey);
      await page.click("#login button[type=submit]");
      await page.waitForSelector("#dashboard:not([hidden])");
      expect(await page.locator("#error").isHidden()).toBe(true);
      expect(await page.locator("#api-base").textContent()).toBe(`Quota service: http://127.0.0.1:${server.httpPort}`);
      await expect.poll(async () => (await bar(page, "requests-daily")).total, { timeout: 15_000 }).toBe("105");
      await page.fill("#buy-value", "100");
      await page.click("#buy-submit");
      await page.waitForSelector("#buy-result:not([hidden])");
      expect(await page.locator("#buy-new-limit").textContent()).toBe("205");
      expect(await page.locator("#buy-new-balance").textContent()).toBe("23.00 USD");
      // Browsers may call GetLimits and wallet TopUp only: CheckAndReserve from this (allowed) origin is refused
      // at the preflight, so the browser never sends it.
      const blocked = await page.evaluate(async (base) => {
        try {
          const r = await fetch(`${base}/quota.v1.QuotaService/CheckAndReserve`, { method: "POST", headers: { "content-type": "application/json" }, body: "{}" });
          return `status ${r.status}`;
        } catch (e) {
          return `blocked: ${(e as Error).message}`;
        }
      }, `http://127.0.0.1:${server.httpPort}`);
      expect(blocked).toBe("blocked: Failed to fetch");

      // The page refreshes by itself (config.json: every 2 s): a backend call shows up without a click.
      const before = Number((await bar(page, "requests-daily")).value);
      const c = clients("grpc-js", server.ports);
      try {
        expect((await c.quota.checkAndReserve({ apiKey, product: "demo-api", method: "things.list" })).decision).toBe(Decision.ALLOWED);
      } finally {
        c.close();
      }
      await expect.poll(async () => Number((await bar(page, "requests-daily")).value), { timeout: 15_000 }).toBe(before + 1);
    } finally {
      await page.close();
    }
  });

  it("fails, and says why, from an origin that is not allowed", async () => {
    const page = await browser.newPage();
    try {
      await login(page, `${deniedHost.origin}/dashboard/`, apiKey);
      await page.waitForSelector("#error:not([hidden])");
      expect(await page.locator("#error").textContent()).toBe(
        `Could not reach the quota service at http://127.0.0.1:${server.httpPort}. It may be down, or it does not accept calls from this page's origin (QUOTA_ALLOWED_ORIGINS).`,
      );
      expect(await page.locator("#dashboard").isHidden()).toBe(true);
      await page.screenshot({ path: join(ARTIFACTS, "dashboard-denied-origin.png"), fullPage: true });
      // The same call with that Origin header outside a browser is refused by the server itself.
      const res = await fetch(`http://127.0.0.1:${server.httpPort}/quota.v1.QuotaService/GetLimits`, {
        method: "POST",
        headers: { "content-type": "application/json", origin: deniedHost.origin },
        body: JSON.stringify({ apiKey }),
      });
      expect(res.status).toBe(403);
      expect(await res.json()).toEqual({ code: "permission_denied", message: `origin ${deniedHost.origin} is not allowed` });
    } finally {
      await page.close();
    }
  });
});
