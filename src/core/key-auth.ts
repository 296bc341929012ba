/**
 * Key authentication for the data plane: an API key ("qa_<id>_<secret>") or a bare key id (trusted callers) is
 * resolved from the KeyCache (no Postgres on a hit) and its secret compared in constant time. Unknown and revoked
 * keys are answers (a denial reason), not errors; malformed requests are INVALID_ARGUMENT. The cache remembers a
 * secret that matched, so SHA-256 runs once per cached key, not once per call.
 */
import { InvalidArgumentError, UnavailableError } from "./errors.ts";
import { parseApiKey } from "./ids.ts";
import type { KeyCache, KeyContext } from "./key-cache.ts";
import { KEY_ID_RE } from "./validation.ts";

/** Who is calling: a backend with the data-plane token, an operator with the admin token, or a browser. */
export type Caller = { kind: "service" } | { kind: "admin" } | { kind: "browser"; origin: string };

export type KeyDenial = "KEY_INVALID" | "KEY_REVOKED";

export interface ResolvedKey {
  ctx?: KeyContext;
  denial?: KeyDenial;
}

/** Resolves and authenticates a key; returns a denial reason instead of throwing for unknown/revoked keys. */
export async function resolveKey(keys: KeyCache, apiKey: string, keyId: string, field = "api_key"): Promise<ResolvedKey> {
  const presented = presentedKey(apiKey, keyId, field);
  if (typeof presented === "string") return { denial: presented };
  let ctx: KeyContext | null;
  try {
    ctx = await keys.get(presented.keyId);
  } catch (e) {
    throw new UnavailableError("key store unreachable", { cause: e });
  }
  return authenticate(keys, presented, ctx);
}

/** resolveKey's answer without waiting when the key cache can give it (a cached key: the hot path); undefined when
 * the key must be loaded (then resolveKey). */
export function resolveCachedKey(keys: KeyCache, apiKey: string, keyId: string, field = "api_key"): ResolvedKey | undefined {
  const presented = presentedKey(apiKey, keyId, field);
  if (typeof presented === "string") return { denial: presented };
  const ctx = keys.cached(presented.keyId);
  return ctx === undefined ? undefined : authenticate(keys, presented, ctx);
}

/** The key id (and secret, for an API key) a request presents; a denial for an API key that cannot be one. */
function presentedKey(apiKey: string, keyId: string, field: string): { keyId: string; secret?: string } | KeyDenial {
  if (apiKey && keyId) throw new InvalidArgumentError("key_id", "give either api_key or key_id, not both");
  if (!apiKey && !keyId) throw new InvalidArgumentError(field, "is required (or key_id)");
  if (apiKey) {
    if (apiKey.length > 200) return "KEY_INVALID";
    return parseApiKey(apiKey) ?? "KEY_INVALID";
  }
  if (!KEY_ID_RE.test(keyId)) throw new InvalidArgumentError("key_id", "is not a key id (16 characters of a-z 2-7)");
  return { keyId };
}

function authenticate(keys: KeyCache, presented: { keyId: string; secret?: string }, ctx: KeyContext | null): ResolvedKey {
  if (!ctx) return { denial: "KEY_INVALID" };
  if (presented.secret !== undefined && !keys.verify(presented.keyId, ctx, presented.secret)) return { denial: "KEY_INVALID" };
  if (ctx.key.status === "revoked") return { ctx, denial: "KEY_REVOKED" };
  return { ctx };
}
