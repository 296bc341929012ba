/**
 * RedisCounterStore: the production CounterStore. Every operation is one Lua script (one round trip; ioredis
 * auto-pipelining batches concurrent calls), and every key of an account carries the hash tag {a:<accountId>} so
 * a script touches one Redis Cluster slot. Key layout: docs/architecture.md, "Redis keys".
 */
import { readFileSync } from "node:fs";
import type { Cluster, Redis } from "ioredis";
import {
  type CapacityEntry,
  type CounterLimit,
  type CounterStore,
  type DenyReasonName,
  type LimitState,
  type ReleaseCommand,
  type ReleaseResult,
  type ReleaseState,
  type ReserveCommand,
  type ReserveResult,
  type SourceState,
  type StateSnapshot,
} from "../../core/counter-store.ts";

const SCRIPTS = ["reserve", "release", "set_capacity", "export_state", "sweep"] as const;
type ScriptName = (typeof SCRIPTS)[number];
const LIB = readFileSync(new URL("./scripts/lib.lua", import.meta.url), "utf8");

type ScriptFn = (numKeys: number, ...args: Array<string | number>) => Promise<unknown>;

export interface RedisCounterStoreOptions {
  /** Prefix before the hash tag, so several deployments (or test files) can share one Redis. */
  keyPrefix?: string;
  /** Overrides Redis TIME (tests with a controlled clock only). */
  clock?: () => number;
}

/** Registers the scripts once on the connection (EVALSHA; ioredis reloads on NOSCRIPT). */
export function defineScripts(redis: Redis | Cluster): void {
  for (const name of SCRIPTS) {
    const body = readFileSync(new URL(`./scripts/${name}.lua`, import.meta.url), "utf8");
    if (typeof (redis as unknown as Record<string, unknown>)[`qa_${name}`] === "function") continue;
    redis.defineCommand(`qa_${name}`, { lua: `${LIB}\n${body}` });
  }
}

export class RedisCounterStore implements CounterStore {
  readonly #redis: Redis | Cluster;
  readonly #prefix: string;
  readonly #clock: (() => number) | undefined;

  constructor(redis: Redis | Cluster, options: RedisCounterStoreOptions = {}) {
    this.#redis = redis;
    this.#prefix = options.keyPrefix ?? "qa:";
    this.#clock = options.clock;
    defineScripts(redis);
  }

  #tag(accountId: string): string {
    return `${this.#prefix}{a:${accountId}}:`;
  }

  #now(): string {
    return this.#clock ? String(this.#clock()) : "";
  }

  #script(name: ScriptName): ScriptFn {
    return (this.#redis as unknown as Record<string, ScriptFn>)[`qa_${name}`]!.bind(this.#redis);
  }

  async reserve(cmd: ReserveCommand): Promise<ReserveResult> {
    const tag = this.#tag(cmd.accountId);
    const keys = [`${tag}cap`, `${tag}rs`, `${tag}rx`, ...cmd.limits.map((l) => `${tag}s:${l.id}`)];
    const payload = {
      reservationId: cmd.reservationId,
      idempotencyId: cmd.idempotencyId ?? "",
      mode: cmd.mode,
      ttlMs: String(cmd.ttlMs),
      product: cmd.product,
      expiryPolicy: cmd.expiryPolicy,
      gates: cmd.gates.map((g) => ({
        reason: g.reason,
        from: g.from === undefined ? "" : String(g.from),
        until: g.until === undefined ? "" : String(g.until),
      })),
      limits: cmd.limits.map(encodeLimit),
    };
    const reply = (await this.#script("reserve")(keys.length, ...keys, this.#now(), JSON.stringify(payload))) as unknown[];
    const [code, reason, deniedId, retry, available, reservationId, overage, replayed, now, shadow, states] = reply as [
      number, string, string, number, number, string, number, number, number, string, unknown[][],
    ];
    const result: ReserveResult = {
      outcome: code === 0 ? "ALLOWED" : code === 1 ? "DENIED" : "NEED_RESTORE",
      overage: overage === 1,
      replayed: replayed === 1,
      now,
      states: states.map(decodeState),
    };
    if (reason) result.reason = reason as DenyReasonName;
    if (shadow) result.shadowReason = shadow as DenyReasonName;
    if (deniedId) result.deniedLimitId = deniedId;
    if (retry >= 0) result.retryAfterMs = retry;
    if (available >= 0) result.availableAt = available;
    if (reservationId) result.reservationId = reservationId;
    return result;
  }

  async release(cmd: ReleaseCommand): Promise<ReleaseResult> {
    const tag = this.#tag(cmd.accountId);
    const actual = Object.fromEntries(Object.entries(cmd.actual).map(([k, v]) => [k, String(v)]));
    const [code, raw] = (await this.#script("release")(
      3, `${tag}cap`, `${tag}rs`, `${tag}rx`, this.#now(), cmd.reservationId, cmd.outcome, JSON.stringify(actual),
    )) as [number, string];
    if (code === 2) return { outcome: "NOT_FOUND", reserved: {}, charged: {}, overage: 0n };
    const done = JSON.parse(raw) as { s: ReleaseState; m: Record<string, string>; c: Record<string, string>; o: string };
    return {
      outcome: code === 0 ? "SETTLED" : "REPLAYED",
      state: done.s,
      reserved: toBigints(done.m),
      charged: toBigints(done.c),
      overage: BigInt(done.o),
    };
  }

  async setCapacity(accountId: string, entries: readonly CapacityEntry[], version = 0): Promise<boolean> {
    return this.#setCapacity(accountId, entries, {}, version, "sync");
  }

  async restore(accountId: string, entries: readonly CapacityEntry[], states: StateSnapshot, version = 0): Promise<boolean> {
    return this.#setCapacity(accountId, entries, states, version, "restore");
  }

  async #setCapacity(accountId: string, entries: readonly CapacityEntry[], states: StateSnapshot, version: number, mode: "sync" | "restore"): Promise<boolean> {
    const tag = this.#tag(accountId);
    const caps = Object.fromEntries(entries.map((e) => [e.limitId, encodeCapacity(e)]));
    const r = (await this.#script("set_capacity")(1, `${tag}cap`, this.#now(), JSON.stringify(caps), JSON.stringify(states), String(version), mode)) as number;
    return r >= 0;
  }

  async exportState(accountId: string, limitIds: readonly string[]): Promise<StateSnapshot> {
    if (limitIds.length === 0) return {};
    const tag = this.#tag(accountId);
    const reply = (await this.#script("export_state")(1, `${tag}cap`, this.#now(), ...limitIds)) as Array<string | string[]>;
    const out: StateSnapshot = {};
    for (let i = 0; i < reply.length; i += 2) {
      const flat = reply[i + 1] as string[];
      const fields: Record<string, string> = {};
      for (let j = 0; j < flat.length; j += 2) fields[flat[j]!] = flat[j + 1]!;
      out[reply[i] as string] = fields;
    }
    return out;
  }

  async sweep(accountId: string): Promise<number> {
    const tag = this.#tag(accountId);
    return (await this.#script("sweep")(3, `${tag}cap`, `${tag}rs`, `${tag}rx`, this.#now(), 1000)) as number;
  }

  async now(): Promise<number> {
    if (this.#clock) return this.#clock();
    const [s, us] = await this.#redis.time();
    return Number(s) * 1000 + Math.floor(Number(us) / 1000);
  }

  async ping(): Promise<void> {
    await this.#redis.ping();
  }

  async close(): Promise<void> {
    this.#redis.disconnect();
  }
}

function encodeLimit(l: CounterLimit): Record<string, unknown> {
  const out: Record<string, unknown> = { id: l.id, kind: l.kind, meter: l.meter, amount: String(l.amount) };
  if (l.limit !== undefined) out.limit = String(l.limit);
  if (l.windowMs !== undefined) out.windowMs = String(l.windowMs);
  if (l.overage !== undefined) out.overage = l.overage;
  if (l.blocks) out.blocks = l.blocks.map(([s, e]) => [String(s), String(e)]);
  if (l.period) {
    const p = l.period;
    out.period =
      p.type === "fixed"
        ? { type: "fixed", bounds: p.bounds.map(String) }
        : p.type === "rolling"
          ? { type: "rolling", windowMs: String(p.windowMs), bucketMs: String(p.bucketMs) }
          : { type: "none" };
  }
  return out;
}

function encodeCapacity(e: CapacityEntry): Record<string, unknown> {
  return {
    b: String(e.base),
    bp: String(e.basePriority),
    g: e.grants.map((g) => [
      g.id, String(g.amount), String(g.priority), String(g.validFrom), g.validUntil === undefined ? "" : String(g.validUntil),
      String(g.seq), g.product,
    ]),
  };
}

function decodeState(raw: unknown[]): LimitState {
  const [limit, used, remaining, reset, overage, exceeded, sources, overageTotal] = raw as [
    number, number, number, number, number, number, Array<[string, number, number, number, number, string]>, number,
  ];
  const state: LimitState = {
    limit: BigInt(limit),
    used: BigInt(used),
    remaining: BigInt(remaining),
    overage: BigInt(overage),
    exceeded: exceeded === 1,
  };
  if (reset >= 0) state.resetAt = reset;
  if (sources.length > 0) {
    state.overageTotal = BigInt(overageTotal);
    state.sources = sources.map(([id, amount, u, priority, expires, product]): SourceState => {
      const s: SourceState = { id, amount: BigInt(amount), used: BigInt(u), priority, product };
      if (expires >= 0) s.expiresAt = expires;
      return s;
    });
  }
  return state;
}

function toBigints(m: Record<string, string> | unknown[]): Record<string, bigint> {
  // cjson encodes an empty Lua table as {} (or [] for arrays): both mean "no meters".
  if (Array.isArray(m)) return {};
  return Object.fromEntries(Object.entries(m).map(([k, v]) => [k, BigInt(v)]));
}
