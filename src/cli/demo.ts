/**
 * `--demo`: seeds a plan, an account, a subscription, a funded wallet and an API key, and prints ready-to-paste
 * calls. Re-running it reuses the plan and account and issues a fresh key (secrets are shown once only).
 */
import type { App } from "../main.ts";

/**
 * The origins of the dashboard this server serves itself, for --demo when QUOTA_ALLOWED_ORIGINS is not set: the
 * page's calls carry an Origin header (browsers send one on every POST), and only allow-listed origins may call.
 */
export function demoOrigins(host: string, httpPort: number): string {
  const hosts = host === "127.0.0.1" || host === "localhost" || host === "0.0.0.0" ? ["127.0.0.1", "localhost"] : [host.includes(":") ? `[${host}]` : host];
  return hosts.map((h) => `http://${h}:${httpPort}`).join(",");
}

export const DEMO_PLANS = `
plans:
  - id: demo
    name: Demo (5 requests a day)
    products: [demo-api]
    methods: { default: 1, costs: { things.search: 2 } }
    limits:
      - { name: requests-daily, kind: quota, scope: subscription, limit: 5, period: daily }
      - { name: rps, kind: rate, scope: key, limit: 10, window: 1s }
      - { name: in-flight, kind: concurrency, scope: key, limit: 100 }
    topUp: { limit: requests-daily, increment: 100, price: { units: 100, amount: "1.00" } }
`;

export async function seedDemo(app: App): Promise<string> {
  await app.admin.applyPlans(DEMO_PLANS, "demo plans");
  const account = await app.admin.getAccount("demo").catch(() => app.admin.createAccount({ id: "demo", name: "Demo customer", requestId: "demo-account" }));
  const sub = await app.admin.createSubscription({ accountId: account.id, planId: "demo", accessBlocks: [], addOns: {}, requestId: "demo-subscription" });
  await app.admin.deposit({ accountId: account.id, wallet: "prepaid", reference: "demo-funding", amount: { currencyCode: "USD", units: 25n, nanos: 0 }, provider: "demo" });
  const { apiKey } = await app.admin.createApiKey({
    accountId: account.id,
    subscriptionId: sub.id,
    name: `demo key ${new Date().toISOString()}`,
    owner: true,
    overageEnabled: false,
    subLimits: {},
    requestId: "",
  });
  const http = `http://${app.config.host}:${app.httpPort}`;
  const grpc = `${app.config.host}:${app.grpcPort}`;
  const auth = app.config.serviceToken ? ` -H 'authorization: Bearer ${app.config.serviceToken}'` : "";
  const origins = app.config.allowedOrigins.length ? app.config.allowedOrigins.join(", ") : "none (the dashboard cannot call the API: set QUOTA_ALLOWED_ORIGINS)";
  return [
    "",
    "Demo seeded: plan demo (5 requests/day, 10 rps), account demo, $25.00 in the prepaid wallet.",
    `API key (shown once): ${apiKey}`,
    `Admin token for this run: ${app.adminToken}`,
    "",
    `Dashboard (paste the API key there): ${http}/dashboard/`,
    `  browser origins allowed (QUOTA_ALLOWED_ORIGINS): ${origins}`,
    "",
    "Check and reserve a call (Connect JSON over HTTP/1.1) — repeat it 6 times to see QUOTA_EXHAUSTED:",
    `  curl -s ${http}/quota.v1.QuotaService/CheckAndReserve -H 'content-type: application/json'${auth} \\`,
    `    -d '{"apiKey":"${apiKey}","product":"demo-api","method":"things.list"}'`,
    "",
    "The same over gRPC:",
    `  grpcurl -plaintext -d '{"api_key":"${apiKey}","product":"demo-api","method":"things.list"}' ${grpc} quota.v1.QuotaService/CheckAndReserve`,
    "",
    "Buy 100 more requests for this cycle from the wallet ($1.00):",
    `  curl -s ${http}/quota.v1.QuotaService/TopUp -H 'content-type: application/json'${auth} \\`,
    `    -d '{"apiKey":"${apiKey}","idempotencyKey":"demo-topup-1","quota":{"lines":[{"units":"100"}]},"fromWallet":{}}'`,
    "",
    "See every limit:",
    `  curl -s ${http}/quota.v1.QuotaService/GetLimits -H 'content-type: application/json'${auth} -d '{"apiKey":"${apiKey}"}'`,
    "",
  ].join("\n");
}
