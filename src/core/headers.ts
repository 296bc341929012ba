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

/**
 * What stays the same from call to call of one key and product: the RateLimit-Policy value, kept with the limit
 * values it was made from (a grant or top-up changes a limit, and then it is made again). The call plan owns one
 * (src/core/limits.ts), so the hot path formats it once, not per call.
 */
export interface HeaderTemplate {
  limits?: bigint[];
  policy?: string;
}

function policyOf(limits: readonly HeaderLimit[], template: HeaderTemplate | undefined): string {
  if (template?.limits !== undefined && template.policy !== undefined) {
    // The names, kinds and windows are the call plan's own (the same list every call); only limit values move.
    let same = true;
    let j = 0;
    for (let i = 0; i < limits.length && same; i++) {
      const l = limits[i]!;
      if (l.kind !== "RATE" && l.kind !== "QUOTA" && l.kind !== "BUDGET") continue;
      same = template.limits[j++] === l.limit;
    }
    if (same && j === template.limits.length) return template.policy;
  }
  const policy: string[] = [];
  const values: bigint[] = [];
  for (const l of limits) {
    if (l.kind !== "RATE" && l.kind !== "QUOTA" && l.kind !== "BUDGET") continue;
    const w = l.windowMs !== undefined ? `;w=${Math.max(1, Math.round(l.windowMs / 1000))}` : "";
    policy.push(`"${l.name}";q=${l.limit}${w}`);
    values.push(l.limit);
  }
  const out = policy.join(", ");
  if (template) {
    template.limits = values;
    template.policy = out;
  }
  return out;
}

export interface HeaderOptions {
  now: number;
  overageEnabled: boolean;
  retryAfterMs?: number;
  template?: HeaderTemplate;
}

export function buildHeaders(limits: readonly HeaderLimit[], opts: HeaderOptions): Record<string, string> {
  // The list is written as it goes (no array to join: this runs for every answer).
  let state = "";
  for (const l of limits) {
    if (l.kind !== "RATE" && l.kind !== "QUOTA" && l.kind !== "BUDGET") continue;
    const t = l.resetAt !== undefined ? `;t=${Math.max(0, Math.ceil((l.resetAt - opts.now) / 1000))}` : "";
    state += `${state === "" ? "" : ", "}"${l.name}";r=${l.remaining}${t}`;
  }
  const headers: Record<string, string> = {};
  if (state !== "") {
    headers["RateLimit-Policy"] = policyOf(limits, opts.template);
    headers["RateLimit"] = state;
  }
  const quota = mainQuota(limits);
  if (quota) {
    headers["X-UnitsLimit-Quota-Overage"] = opts.overageEnabled ? "enabled" : "disabled";
    headers["X-UnitsLimit-Quota-Allocated"] = String(quota.limit);
    headers["X-UnitsLimit-Quota-Used"] = String(quota.used + quota.overage);
    headers["X-UnitsLimit-Quota-Remaining"] = String(quota.remaining);
  }
  if (opts.retryAfterMs !== undefined) headers["Retry-After"] = String(Math.max(1, Math.ceil(opts.retryAfterMs / 1000)));
  return headers;
}

/** The call's main quota: the first quota limit not of the key (shared by the subscription), else the first one. */
function mainQuota(limits: readonly HeaderLimit[]): HeaderLimit | undefined {
  let first: HeaderLimit | undefined;
  for (const l of limits) {
    if (l.kind !== "QUOTA") continue;
    if (l.scope !== "KEY") return l;
    first ??= l;
  }
  return first;
}
