// A service that enforces quota-authority limits on its own API: the README's "Use it from your service" example.
// npm install express @quota-authority/client; start the quota service (`npm start -- --demo` in its repository),
// then: QUOTA_ADDRESS=127.0.0.1:50051 node express-app.ts   (plain JavaScript too: rename it .mjs on Node < 24)
import express from "express";
import { createQuotaClient } from "@quota-authority/client";
import { quotaLimit } from "@quota-authority/client/express";

const quota = createQuotaClient({
  address: process.env.QUOTA_ADDRESS ?? "127.0.0.1:50051", // the quota service's gRPC port (the sidecar)
  transport: "grpc", // or "connect" with its HTTP port (8080)
  token: process.env.QUOTA_SERVICE_TOKEN, // the data-plane token, when the service requires one
  deadlineMs: 1000, // no answer by then: "quota service unavailable" (the first call per key reads Postgres)
  failureMode: "closed", // unavailable: answer 503 ("open": serve without counting)
});

const app = express();
app.use(
  quotaLimit({
    client: quota,
    getKey: (req) => req.get("x-api-key"), // the end customer's API key
    product: "demo-api",
    method: (req) => (req.path.startsWith("/search") ? "things.search" : "things.list"), // selects the cost weight
    actualCost: (_req, res) => res.locals.units, // what the call really cost (default: what was reserved)
    onError: (err, { phase }) => console.warn(`quota service unavailable (${phase}): ${err.message}`),
  }),
);

app.get("/things", (_req, res) => {
  res.json({ things: ["a", "b"], remaining: String(res.locals.quota?.limits[0]?.remaining) });
});
app.get("/search", (_req, res) => {
  res.locals.units = 1; // a cheap search: charge 1 unit instead of the 2 reserved
  res.json({ found: [] });
});

const port = Number(process.env.PORT ?? 3000);
const server = app.listen(port, "127.0.0.1", () => console.log(`listening on http://127.0.0.1:${port}`));
process.on("SIGTERM", () => server.close(() => quota.close()));
