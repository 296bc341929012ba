/**
 * The usage dashboard: asks for an API key (kept in this module's memory only — never in the URL, storage or a
 * cookie), then shows GetLimits (plan, cycle, every limit as a bar with its capacity sources, balances, grants)
 * and buys quota from the wallet (TopUp with an idempotency key). Calls go through @connectrpc/connect-web (the
 * Connect protocol, JSON) to the API base: this page's own origin, or `apiBaseUrl` from ./config.json when the
 * page is hosted elsewhere (that origin must be in the server's QUOTA_ALLOWED_ORIGINS). Browsers may call only
 * GetLimits and wallet-funded TopUp; the server enforces that, this page just stays inside it.
 */
import { ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { timestampMs, type Timestamp } from "@bufbuild/protobuf/wkt";
import { QuotaService, type GetLimitsResponse, type Grant, type TopUpResponse } from "../../src/gen/quota/v1/quota_pb.ts";
import { LimitKind, Scope, type LimitStatus } from "../../src/gen/quota/v1/types_pb.ts";
import { describeError, formatCount, formatInstant, formatMoney, formatWindow, InputError, parseDollars, parseUnits, relativeTime, usedShare } from "./format.ts";

interface PageConfig {
  apiBaseUrl: string;
  refreshSeconds: number;
}

const $ = <T extends HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`missing #${id}`);
  return el as T;
};

function el<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Record<string, string> = {}, ...children: Array<Node | string>): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const c of children) e.append(c);
  return e;
}

const ms = (t: Timestamp | undefined): number | undefined => (t ? timestampMs(t) : undefined);

async function loadConfig(): Promise<PageConfig> {
  const fallback: PageConfig = { apiBaseUrl: location.origin, refreshSeconds: 10 };
  try {
    const res = await fetch("./config.json", { cache: "no-store" });
    if (!res.ok) return fallback;
    const c = (await res.json()) as Partial<PageConfig>;
    return {
      apiBaseUrl: typeof c.apiBaseUrl === "string" && c.apiBaseUrl ? c.apiBaseUrl.replace(/\/$/, "") : fallback.apiBaseUrl,
      refreshSeconds: typeof c.refreshSeconds === "number" && c.refreshSeconds >= 1 ? c.refreshSeconds : fallback.refreshSeconds,
    };
  } catch {
    return fallback;
  }
}

const KIND_WORDS: Record<number, string> = {
  [LimitKind.RATE]: "rate limit",
  [LimitKind.QUOTA]: "quota",
  [LimitKind.CONCURRENCY]: "calls in flight",
  [LimitKind.BUDGET]: "budget",
  [LimitKind.ACCESS_WINDOW]: "access window",
};
const SCOPE_WORDS: Record<number, string> = { [Scope.KEY]: "this key", [Scope.SUBSCRIPTION]: "subscription", [Scope.ACCOUNT]: "account" };
const SOURCE_WORDS: Record<string, string> = { plan: "plan", add_on: "add-on", grant: "grant", topup: "top-up", adjustment: "adjustment" };

function limitView(l: LimitStatus, now: number): HTMLElement {
  const share = usedShare(l.used, l.limit);
  const unit = (l.unit || "units").replaceAll("_", " ");
  const item = el("li", { class: "limit", "data-limit": l.name, ...(l.product ? { "data-product": l.product } : {}) });
  if (l.exceeded) item.classList.add("exceeded");
  else if (share >= 0.8) item.classList.add("high");
  const kind = KIND_WORDS[l.kind] ?? "limit";
  const windowWords = l.window ? ` ${formatWindow(Number(l.window.seconds))}` : "";
  item.append(
    el(
      "div",
      { class: "head" },
      el("span", { class: "name" }, l.name + (l.product ? ` (${l.product})` : "")),
      el("span", { class: "kind" }, `${kind}${windowWords}, ${SCOPE_WORDS[l.scope] ?? "scope"}`),
    ),
  );
  const bar = el("progress", {
    max: String(l.limit > 0n ? l.limit : 1n),
    value: String(l.used > l.limit ? l.limit : l.used),
    "aria-label": `${l.name}: ${l.used} of ${l.limit} ${unit} used`,
  });
  item.append(bar);
  const resets = ms(l.resetsAt);
  const numbers = el(
    "div",
    { class: "numbers" },
    el("span", { class: "used" }, formatCount(l.used)),
    ` of `,
    el("span", { class: "total" }, formatCount(l.limit)),
    ` ${unit} used · `,
    el("span", { class: "remaining" }, formatCount(l.remaining)),
    " remaining",
  );
  if (l.overageTotal > 0n) numbers.append(` · ${formatCount(l.overageTotal)} overage (billed later)`);
  if (resets !== undefined) numbers.append(" · resets ", el("time", { class: "resets", datetime: new Date(resets).toISOString(), title: formatInstant(resets) }, relativeTime(resets, now)));
  item.append(numbers);
  if (l.sources.length) {
    const sources = el("ul", { class: "sources" });
    for (const s of l.sources) {
      const expires = ms(s.expiresAt);
      const text =
        `${SOURCE_WORDS[s.kind] ?? s.kind}${s.id && s.kind !== "plan" ? ` ${s.id}` : ""}: ${formatCount(s.amount)}` +
        (s.used > 0n && s.kind !== "plan" ? ` (${formatCount(s.used)} used)` : "") +
        (s.product ? ` for ${s.product}` : "") +
        // The plan's own capacity "expires" at the reset shown above; grants and add-ons have their own end.
        (expires !== undefined && s.kind !== "plan" ? `, expires ${formatInstant(expires)}` : "");
      sources.append(el("li", { class: "source", "data-kind": s.kind }, text));
    }
    item.append(sources);
  }
  return item;
}

function render(view: GetLimitsResponse, now: number): void {
  const subs = $("subscriptions");
  subs.replaceChildren();
  for (const s of view.subscriptions) {
    const start = ms(s.cycleStart);
    const end = ms(s.cycleEnd);
    const box = el("article", { class: "subscription", "data-subscription": s.id });
    box.append(el("h2", { class: "plan" }, s.planName || s.planId));
    const cycle = el("p", { class: "cycle" }, `Plan ${s.planId} · ${s.status}`);
    if (start !== undefined && end !== undefined) cycle.append(` · cycle ${formatInstant(start)} → ${formatInstant(end)} (renews ${relativeTime(end, now)})`);
    if (s.accessBlocks.length) cycle.append(` · access blocks: ${s.accessBlocks.join(", ")}`);
    const addOns = Object.entries(s.addOns);
    if (addOns.length) cycle.append(` · add-ons: ${addOns.map(([limit, pkg]) => `${pkg} (${limit})`).join(", ")}`);
    box.append(cycle);
    const list = el("ul", { class: "limits" });
    for (const l of s.limits) list.append(limitView(l, now));
    box.append(list);
    subs.append(box);
  }
  if (!view.subscriptions.length) subs.append(el("p", { class: "muted" }, "This key has no subscription (credit only)."));

  const wallets = $("wallets");
  wallets.replaceChildren();
  for (const w of view.wallets) {
    const label = w.kind === "prepaid" ? "Prepaid wallet" : w.kind === "credit" ? "Credit balance" : w.kind;
    wallets.append(el("dt", {}, label), el("dd", { "data-wallet": w.kind }, formatMoney(w.balance)));
  }
  if (view.credit) {
    wallets.append(el("dt", {}, "Credit spent"), el("dd", { "data-credit": "spent" }, formatMoney(view.credit.spent)));
    wallets.append(el("dt", {}, "Credit remaining"), el("dd", { "data-credit": "remaining" }, formatMoney(view.credit.remaining)));
  }

  renderGrants(view.grants, now);
  $("updated").textContent = `Updated ${formatInstant(ms(view.asOf) ?? now)}`;
}

function renderGrants(grants: Grant[], now: number): void {
  const body = $("grants").querySelector("tbody")!;
  body.replaceChildren();
  for (const g of grants) {
    const until = ms(g.validUntil);
    body.append(
      el(
        "tr",
        { "data-grant": g.id },
        el("td", {}, g.limit),
        el("td", {}, g.product || "all products"),
        el("td", { class: "num" }, formatCount(g.amount)),
        el("td", {}, g.source),
        el("td", {}, until === undefined ? "never" : `${formatInstant(until)} (${relativeTime(until, now)})`),
      ),
    );
  }
  $("no-grants").hidden = grants.length > 0;
  $("grants").hidden = grants.length === 0;
}

function showError(target: HTMLElement, e: unknown, apiBase: string): void {
  const ce = e instanceof ConnectError ? e : ConnectError.from(e);
  const reason = ce.metadata.get("x-error-reason") ?? undefined;
  target.textContent = describeError({ code: ce.code, rawMessage: ce.rawMessage, ...(reason ? { reason } : {}) }, apiBase);
  target.hidden = false;
}

async function start(): Promise<void> {
  const config = await loadConfig();
  $("api-base").textContent = `Quota service: ${config.apiBaseUrl}`;
  const client: Client<typeof QuotaService> = createClient(QuotaService, createConnectTransport({ baseUrl: config.apiBaseUrl }));

  // The key lives here and nowhere else; "Forget key" (or closing the tab) drops it.
  let apiKey = "";
  let timer: ReturnType<typeof setInterval> | undefined;
  let inFlight = false;
  // A refresh asked for while one is in flight runs once more after it (that one may predate the change).
  let again = false;
  // Reused when a purchase is retried after an answer never came (the first attempt may have been applied).
  let pending: { input: string; key: string } | undefined;

  const errorBox = $("error");
  const refresh = async (): Promise<boolean> => {
    if (!apiKey) return false;
    if (inFlight) {
      again = true;
      return false;
    }
    inFlight = true;
    try {
      const view = await client.getLimits({ apiKey }, { timeoutMs: 10_000 });
      errorBox.hidden = true;
      render(view, Date.now());
      $("dashboard").hidden = false;
      return true;
    } catch (e) {
      showError(errorBox, e, config.apiBaseUrl);
      return false;
    } finally {
      inFlight = false;
      if (again) {
        again = false;
        void refresh();
      }
    }
  };

  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = $<HTMLInputElement>("api-key");
    const value = input.value.trim();
    if (!value) return;
    apiKey = value;
    input.value = "";
    void refresh().then((ok) => {
      if (!ok && $("dashboard").hidden) apiKey = "";
      if (ok) {
        $("login").hidden = true;
        clearInterval(timer);
        timer = setInterval(() => void refresh(), config.refreshSeconds * 1000);
      }
    });
  });

  $("refresh").addEventListener("click", () => void refresh());
  $("forget").addEventListener("click", () => {
    apiKey = "";
    clearInterval(timer);
    $("dashboard").hidden = true;
    $("login").hidden = false;
    $("subscriptions").replaceChildren();
    $("wallets").replaceChildren();
    errorBox.hidden = true;
  });

  $("buy").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const result = $("buy-result");
    const error = $("buy-error");
    result.hidden = true;
    error.hidden = true;
    const by = ($("buy").querySelector<HTMLInputElement>('input[name="buy-by"]:checked')?.value ?? "units") as "units" | "amount";
    const raw = $<HTMLInputElement>("buy-value").value;
    const product = $<HTMLInputElement>("buy-product").value.trim();
    let line: { product: string; units?: bigint; amount?: { currencyCode: string; units: bigint; nanos: number } };
    try {
      line = by === "units" ? { product, units: parseUnits(raw) } : { product, amount: parseDollars(raw) };
    } catch (e) {
      if (!(e instanceof InputError)) throw e;
      error.textContent = `Check the amount: ${e.message}.`;
      error.hidden = false;
      return;
    }
    const input = `${by}|${raw.trim()}|${product}`;
    if (!pending || pending.input !== input) pending = { input, key: `web-${crypto.randomUUID()}` };
    const idempotencyKey = pending.key;
    const button = $<HTMLButtonElement>("buy-submit");
    button.disabled = true;
    client
      .topUp({ apiKey, idempotencyKey, target: { case: "quota", value: { lines: [line] } }, funding: { case: "fromWallet", value: {} } }, { timeoutMs: 15_000 })
      .then((r: TopUpResponse) => {
        pending = undefined;
        const bought = r.grants.reduce((n, g) => n + g.amount, 0n);
        result.replaceChildren(
          `${r.replayed ? "Already bought" : "Bought"} ${formatCount(bought)} units. New limit: `,
          el("strong", { id: "buy-new-limit" }, formatCount(r.newLimit)),
          ". Wallet balance: ",
          el("strong", { id: "buy-new-balance" }, formatMoney(r.newBalance)),
          `. Transaction ${r.transactionId}.`,
        );
        result.hidden = false;
        $<HTMLInputElement>("buy-value").value = "";
        return refresh();
      })
      .catch((e: unknown) => {
        const ce = ConnectError.from(e);
        // A definite answer (bad input, not enough money...) means nothing was applied: the next try gets a new
        // key. Without an answer the purchase may have gone through, so a retry reuses the key (no double buy).
        if (ce.code !== 14 && ce.code !== 4 && ce.code !== 2) pending = undefined;
        showError(error, ce, config.apiBaseUrl);
      })
      .finally(() => {
        button.disabled = false;
      });
  });
}

void start();
