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
  if (apiKey && keyId) throw new InvalidArgumentError("key_id", "give either api_key or key_id, not both");
  if (!apiKey && !keyId) throw new InvalidArgumentError(field, "is required (or key_id)");
  let id = keyId;
  let secret: string | undefined;
  if (apiKey) {
    if (apiKey.length > 200) return { denial: "KEY_INVALID" };
    const parsed = parseApiKey(apiKey);
    if (!parsed) return { denial: "KEY_INVALID" };
    id = parsed.keyId;
    secret = parsed.secret;
  } else if (!KEY_ID_RE.test(keyId)) {
    throw new InvalidArgumentError("key_id", "is not a key id (16 characters of a-z 2-7)");
  }
  let ctx: KeyContext | null;
  try {
    ctx = await keys.get(id);
  } catch (e) {
    throw new UnavailableError("key store unreachable", { cause: e });
  }
  if (!ctx) return { denial: "KEY_INVALID" };
  if (secret !== undefined && !keys.verify(id, ctx, secret)) return { denial: "KEY_INVALID" };
  if (ctx.key.status === "revoked") return { ctx, denial: "KEY_REVOKED" };
  return { ctx };
}
