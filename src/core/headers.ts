/**
 * Ready-to-send HTTP headers for an answer:
 * - IETF RateLimit-Policy / RateLimit (draft-ietf-httpapi-ratelimit-headers, structured-field lists): one item per
 *   rate and quota limit: `"<name>";q=<quota>;w=<window s>` and `"<name>";r=<remaining>;t=<s until reset>`;
 * - X-UnitsLimit-Quota-Overage / -Allocated / -Used / -Remaining for the call's main quota (the first quota limit
 *   shared by the subscription, else the first quota limit);
 * - Retry-After (seconds) when denied with a known wait.
 */
export interface HeaderLimit {
  name: string;
  kind: string;
  scope: string;
  limit: bigint;
  used: bigint;
  remaining: bigint;
  overage: bigint;
  resetAt?: number;
  windowMs?: number;
}

export function buildHeaders(limits: readonly HeaderLimit[], opts: { now: number; overageEnabled: boolean; retryAfterMs?: number }): Record<string, string> {
  const policy: string[] = [];
  const state: string[] = [];
  for (const l of limits) {
    if (l.kind !== "RATE" && l.kind !== "QUOTA" && l.kind !== "BUDGET") continue;
    const w = l.windowMs !== undefined ? `;w=${Math.max(1, Math.round(l.windowMs / 1000))}` : "";
    policy.push(`"${l.name}";q=${l.limit}${w}`);
    const t = l.resetAt !== undefined ? `;t=${Math.max(0, Math.ceil((l.resetAt - opts.now) / 1000))}` : "";
    state.push(`"${l.name}";r=${l.remaining}${t}`);
  }
  const headers: Record<string, string> = {};
  if (policy.length > 0) {
    headers["RateLimit-Policy"] = policy.join(", ");
    headers["RateLimit"] = state.join(", ");
  }
  const quota = limits.find((l) => l.kind === "QUOTA" && l.scope !== "KEY") ?? limits.find((l) => l.kind === "QUOTA");
  if (quota) {
    headers["X-UnitsLimit-Quota-Overage"] = opts.overageEnabled ? "enabled" : "disabled";
    headers["X-UnitsLimit-Quota-Allocated"] = String(quota.limit);
    headers["X-UnitsLimit-Quota-Used"] = String(quota.used + quota.overage);
    headers["X-UnitsLimit-Quota-Remaining"] = String(quota.remaining);
  }
  if (opts.retryAfterMs !== undefined) headers["Retry-After"] = String(Math.max(1, Math.ceil(opts.retryAfterMs / 1000)));
  return headers;
}
