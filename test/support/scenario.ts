/**
 * Scenario tests: the real service (real Postgres and Redis) behind a real gRPC client, with a clock the test moves
 * (cycle boundaries are crossed without waiting). Plans come from examples/plans/, optionally with numbers scaled
 * down so a test can exhaust them.
 */
import { readFileSync } from "node:fs";
import { parse } from "yaml";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { ManualClock } from "./env.ts";
import { startTestApp, type TestApp } from "./app.ts";
import { ADMIN, clients, type Clients } from "./clients.ts";

export interface Scenario {
  t: TestApp;
  c: Clients;
  clock: ManualClock;
  stop(): Promise<void>;
}

export async function startScenario(start: string): Promise<Scenario> {
  const clock = new ManualClock(Date.parse(start));
  const t = await startTestApp({ clock });
  const c = clients("grpc-js", { grpc: t.app.grpcPort, http: t.app.httpPort });
  return { t, c, clock, stop: async () => (c.close(), await t.stop()) };
}

type PlanDoc = { plans: Array<Record<string, unknown> & { id: string; limits: Array<Record<string, unknown>> }> };

/** Loads examples/plans/FILE, lets the test adjust it, and applies it through the admin API. */
export async function applyExample(c: Clients, file: string, adjust?: (doc: PlanDoc) => void): Promise<PlanDoc> {
  const doc = parse(readFileSync(new URL(`../../examples/plans/${file}`, import.meta.url), "utf8")) as PlanDoc;
  adjust?.(doc);
  await c.admin.applyPlans({ document: JSON.stringify(doc) }, ADMIN);
  return doc;
}

export const iso = (t: Timestamp | undefined): string => (t ? timestampDate(t).toISOString() : "");
