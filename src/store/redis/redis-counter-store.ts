/**
 * RedisCounterStore: the production CounterStore. Every operation is one Lua script (one round trip; ioredis
 * auto-pipelining batches concurrent calls), and every key of an account carries the hash tag {a:<accountId>} so
 * a script touches one Redis Cluster slot. Key layout: docs/architecture.md, "Redis keys".
 */
import { readFileSync } from "node:fs";
import { Cluster, type Redis } from "ioredis";
import {
  DEFAULT_RETENTION_GRACE_MS,
  type CapacityEntry,
  type CapacityWrite,
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

/** A script's call: the number of keys, the keys, then the arguments. */
type ScriptFn = (...numKeysThenKeysThenArgs: Array<string | number>) => Promise<unknown>;

export interface RedisCounterStoreOptions {
  /** Prefix before the hash tag, so several deployments (or test files) can share one Redis. */
  keyPrefix?: string;
  /** Overrides Redis TIME (tests with a controlled clock only). */
  clock?: () => number;
  /** How long past a reservation's TTL its settled result (and its idempotency id) is kept for replays. */
  retentionGraceMs?: number;
  /** Lua placed before every script (tests: test/support/redis-guard.ts refuses any key not declared in KEYS). */
  scriptPrelude?: string;
}

/** Registers the scripts once on the connection (EVALSHA; ioredis reloads on NOSCRIPT). All of them at construction:
 * a command defined later is missing from auto-pipelines created before it (ioredis copies the commands into each
 * pipeline), which broke pipelined replies. `prelude`: Lua placed before each script (tests). */
export function defineScripts(redis: Redis | Cluster, prelude = ""): void {
  for (const name of SCRIPTS) {
    const body = readFileSync(new URL(`./scripts/${name}.lua`, import.meta.url), "utf8");
    if (typeof (redis as unknown as Record<string, unknown>)[`qa_${name}`] === "function") continue;
    redis.defineCommand(`qa_${name}`, { lua: `${prelude}${LIB}\n${body}` });
  }
}

export class RedisCounterStore implements CounterStore {
  readonly #redis: Redis | Cluster;
  readonly #prefix: string;
  readonly #clock: (() => number) | undefined;
  readonly #grace: string;
  readonly #pendingReserves = new Map<string, Pending<ReserveCommand, ReserveResult>[]>();
  readonly #pendingReleases = new Map<string, Pending<ReleaseCommand, ReleaseResult>[]>();
  #flushScheduled = false;
  readonly #pendingExports: Pending<ExportCommand, ExportResult>[] = [];
  #exportsScheduled = false;

  constructor(redis: Redis | Cluster, options: RedisCounterStoreOptions = {}) {
    this.#redis = redis;
    this.#prefix = options.keyPrefix ?? "qa:";
    this.#clock = options.clock;
    this.#grace = String(options.retentionGraceMs ?? DEFAULT_RETENTION_GRACE_MS);
    defineScripts(redis, options.scriptPrelude);
  }

  #tag(accountId: string): string {
    return `${this.#prefix}{a:${accountId}}:`;
  }

  /** The five keys every script declares first (lib.lua): capacity, reservations, their expiry index, usage, freed
   * concurrency slots. */
  #fixedKeys(accountId: string): string[] {
    const tag = this.#tag(accountId);
    return [`${tag}cap`, `${tag}rs`, `${tag}rx`, `${tag}u`, `${tag}fr`];
  }

  #now(): string {
    return this.#clock ? String(this.#clock()) : "";
  }

  /** Bound once: not a bound function per script call. */
  readonly #scripts = new Map<ScriptName, ScriptFn>();

  #script(name: ScriptName): ScriptFn {
    let fn = this.#scripts.get(name);
    if (fn === undefined) this.#scripts.set(name, (fn = (this.#redis as unknown as Record<string, ScriptFn>)[`qa_${name}`]!.bind(this.#redis)));
    return fn;
  }

  /** Calls of one account made in the same tick (the items of a CheckAndReserveBatch, concurrent single calls) go to
   * Redis as ONE script call (reserve.lua takes several, in order), at most MAX_GROUP per call; each gets its own
   * answer, exactly as if the calls had been made one after another. */
  reserve(cmd: ReserveCommand): Promise<ReserveResult> {
    return this.#enqueue(this.#pendingReserves, cmd);
  }

  /** Queues a call for the end of the tick, when its account's group goes as one script call. */
  #enqueue<C extends { accountId: string }, R>(queue: Map<string, Pending<C, R>[]>, cmd: C): Promise<R> {
    return new Promise<R>((resolve, reject) => {
      let group = queue.get(cmd.accountId);
      if (!group) queue.set(cmd.accountId, (group = []));
      group.push({ cmd, resolve, reject });
      if (this.#flushScheduled) return;
      this.#flushScheduled = true;
      // After the current tick's microtasks: every call started together (a batch's items) is queued by then.
      process.nextTick(() => this.#flush());
    });
  }

  #tickCorked = false;

  /** On a single Redis, holds the socket's writes until the end of the tick, so the script calls of a tick (the
   * groups of many accounts, the flusher's 64 accounts in flight) leave in one write, not a syscall each. A Cluster
   * writes to several nodes; its commands go as they are. */
  #corkForTick(): void {
    if (this.#tickCorked || this.#redis instanceof Cluster) return;
    const socket = (this.#redis as { stream?: { cork(): void; uncork(): void; writable?: boolean } }).stream;
    if (socket?.writable !== true) return;
    socket.cork();
    this.#tickCorked = true;
    process.nextTick(() => {
      this.#tickCorked = false;
      socket.uncork();
    });
  }

  #flush(): void {
    this.#flushScheduled = false;
    this.#corkForTick();
    // Releases first: what they free is there for the reserves of the same tick (within a tick, order is arbitrary).
    sendGroups(this.#pendingReleases, (accountId, calls) => this.#releaseGroup(accountId, calls));
    sendGroups(this.#pendingReserves, (accountId, calls) => this.#reserveGroup(accountId, calls));
  }

  #reserveGroup(accountId: string, calls: Pending<ReserveCommand, ReserveResult>[]): void {
    const tag = this.#tag(accountId);
    // The script's arguments, in order: the number of keys, the keys (the fixed five, then one per description),
    // the time, the grace, the limit descriptions (each sent once per script call, reserve.lua's header: the script
    // decodes no JSON), then the calls. Descriptions and calls are collected first: their counts come before them.
    const keys = this.#fixedKeys(accountId);
    const descs: string[] = [];
    const descIndex = new Map<string, number>();
    // The calls of one key share its call plan's limits (the same field values): such a limit is described once per
    // group, not once per call. `byId`: the first limit of each id and its description's number.
    const byId = new Map<string, { limit: CounterLimit; d: number }>();
    const items: string[] = [];
    for (let c = 0; c < calls.length; c++) {
      const cmd = calls[c]!.cmd;
      let refs = "";
      for (let i = 0; i < cmd.limits.length; i++) {
        const l = cmd.limits[i]!;
        const seen = byId.get(l.id);
        let d = seen !== undefined && sameDescription(seen.limit, l) ? seen.d : undefined;
        if (d === undefined) {
          const desc = describeLimit(l);
          d = descIndex.get(desc);
          if (d === undefined) {
            descs.push(desc);
            keys.push(`${tag}s:${l.id}`);
            descIndex.set(desc, (d = descs.length));
          }
          if (seen === undefined) byId.set(l.id, { limit: l, d });
        }
        refs += `${refs ? "," : ""}${d}=${l.amount}`;
      }
      let gates = "";
      for (const g of cmd.gates) gates += `${gates ? ";" : ""}${g.reason},${g.from ?? ""},${g.until ?? ""}`;
      items.push(
        cmd.reservationId, cmd.idempotencyId ? (cmd.requestHash ? `${cmd.idempotencyId}|${cmd.requestHash}` : cmd.idempotencyId) : "", MODE_CODE[cmd.mode],
        String(cmd.ttlMs), cmd.product, cmd.expiryPolicy, gates, refs,
      );
    }
    const args: Array<string | number> = [keys.length];
    for (let i = 0; i < keys.length; i++) args.push(keys[i]!);
    args.push(this.#now(), this.#grace, String(descs.length));
    for (let i = 0; i < descs.length; i++) args.push(descs[i]!);
    args.push(String(calls.length));
    for (let i = 0; i < items.length; i++) args.push(items[i]!);
    this.#script("reserve")(...args).then(
      (reply) => {
        if (reply === 2) {
          for (const c of calls) c.resolve(needRestore());
          return;
        }
        const answers = (reply as string).split("\n");
        for (let i = 0; i < calls.length; i++) calls[i]!.resolve(decodeReserve(answers[i]!, calls[i]!.cmd.reservationId));
      },
      (e: unknown) => {
        for (const c of calls) c.reject(e);
      },
    );
  }

  /** Releases of one account made in the same tick go to Redis as one script call, as reserves do. */
  release(cmd: ReleaseCommand): Promise<ReleaseResult> {
    return this.#enqueue(this.#pendingReleases, cmd);
  }

  #releaseGroup(accountId: string, calls: Pending<ReleaseCommand, ReleaseResult>[]): void {
    const args = [this.#now(), this.#grace, String(calls.length)];
    for (const { cmd } of calls) {
      let actual = "";
      for (const [meter, amount] of Object.entries(cmd.actual)) actual += `${actual ? "," : ""}${meter}=${amount}`;
      args.push(cmd.reservationId, cmd.outcome, actual);
    }
    this.#script("release")(5, ...this.#fixedKeys(accountId), ...args).then(
      (reply) => {
        // "<code>|<result>" per Release, joined by newlines (release.lua)
        const replies = (reply as string).split("\n");
        for (let i = 0; i < calls.length; i++) {
          const r = replies[i]!;
          const code = r.charCodeAt(0) - 48;
          calls[i]!.resolve(code === 2 ? { outcome: "NOT_FOUND", reserved: {}, charged: {}, overage: 0n } : { outcome: code === 0 ? "SETTLED" : "REPLAYED", ...decodeSettled(r.slice(2)) });
        }
      },
      (e: unknown) => {
        for (const c of calls) c.reject(e);
      },
    );
  }

  async setCapacity(accountId: string, entries: readonly CapacityEntry[], version = 0): Promise<CapacityWrite> {
    const r = await this.#setCapacity(accountId, entries, {}, version, "sync");
    return r === -2 ? "absent" : r === -1 ? "stale" : "written";
  }

  async restore(accountId: string, entries: readonly CapacityEntry[], states: StateSnapshot, version = 0): Promise<boolean> {
    return (await this.#setCapacity(accountId, entries, states, version, "restore")) >= 0;
  }

  async #setCapacity(accountId: string, entries: readonly CapacityEntry[], states: StateSnapshot, version: number, mode: "sync" | "restore"): Promise<number> {
    const caps = Object.fromEntries(entries.map((e) => [e.limitId, encodeCapacity(e)]));
    return (await this.#script("set_capacity")(5, ...this.#fixedKeys(accountId), this.#now(), JSON.stringify(caps), JSON.stringify(states), String(version), mode)) as number;
  }

  async capacityVersions(accountIds: readonly string[]): Promise<Map<string, number | null>> {
    // One HGET per account (each in its own cluster slot), sent together by auto-pipelining.
    const versions = await Promise.all(accountIds.map((id) => this.#redis.hget(`${this.#tag(id)}cap`, "v")));
    return new Map(accountIds.map((id, i) => [id, versions[i] == null ? null : Number(versions[i])]));
  }

  async exportState(accountId: string, limitIds: readonly string[]): Promise<StateSnapshot> {
    return (await this.#export(accountId, limitIds, 0)).states;
  }

  sweepAndExport(accountId: string, limitIds: readonly string[]): Promise<{ settled: number; states: StateSnapshot }> {
    return this.#export(accountId, limitIds, 1000);
  }

  /** On a single Redis, the exports of a tick (the flusher's accounts in flight) go as one export_state.lua call per
   * MAX_EXPORT_GROUP accounts: the script's fixed cost and a round of ioredis once per group, not per account. On a
   * Cluster each account goes alone (another account's keys may live in another slot). */
  #export(accountId: string, limitIds: readonly string[], sweepMax: number): Promise<ExportResult> {
    if (limitIds.length === 0 && sweepMax === 0) return Promise.resolve({ settled: 0, states: {} });
    return new Promise<ExportResult>((resolve, reject) => {
      const pending = { cmd: { accountId, limitIds, sweepMax }, resolve, reject };
      if (this.#redis instanceof Cluster) this.#sendExports([pending]);
      else this.#queueExports([pending]);
    });
  }

  /** Queues exports for the end of the tick, when they go grouped. */
  #queueExports(pending: Pending<ExportCommand, ExportResult>[]): void {
    this.#pendingExports.push(...pending);
    if (this.#exportsScheduled) return;
    this.#exportsScheduled = true;
    process.nextTick(() => this.#flushExports());
  }

  #flushExports(): void {
    this.#exportsScheduled = false;
    const all = this.#pendingExports.splice(0);
    this.#corkForTick();
    // One group per run of calls with the same sweep bound (the script takes one), at most MAX_EXPORT_GROUP each.
    let group: Pending<ExportCommand, ExportResult>[] = [];
    for (const p of all) {
      if (group.length > 0 && (group.length >= MAX_EXPORT_GROUP || group[0]!.cmd.sweepMax !== p.cmd.sweepMax)) {
        this.#sendExports(group);
        group = [];
      }
      group.push(p);
    }
    if (group.length > 0) this.#sendExports(group);
  }

  #sendExports(calls: Pending<ExportCommand, ExportResult>[]): void {
    const keys: string[] = [];
    const args = [this.#now(), String(calls[0]!.cmd.sweepMax), this.#grace, String(calls.length)];
    for (const { cmd } of calls) {
      keys.push(...this.#fixedKeys(cmd.accountId));
      args.push(String(cmd.limitIds.length), ...cmd.limitIds);
    }
    this.#script("export_state")(keys.length, ...keys, ...args).then(
      (reply) => {
        const replies = reply as Array<[number, Array<string | string[]>]>;
        // The script stops early once it has settled its bound (export_state.lua): the rest go again.
        if (replies.length < calls.length) this.#queueExports(calls.slice(replies.length));
        for (let i = 0; i < replies.length; i++) {
          const [settled, flatStates] = replies[i]!;
          const states: StateSnapshot = {};
          for (let j = 0; j < flatStates.length; j += 2) {
            const flat = flatStates[j + 1] as string[];
            const fields: Record<string, string> = {};
            for (let k = 0; k < flat.length; k += 2) fields[flat[k]!] = flat[k + 1]!;
            states[flatStates[j] as string] = fields;
          }
          calls[i]!.resolve({ settled, states });
        }
      },
      (e: unknown) => {
        for (const c of calls) c.reject(e);
      },
    );
  }

  async sweep(accountId: string): Promise<number> {
    return (await this.#script("sweep")(5, ...this.#fixedKeys(accountId), this.#now(), 1000, this.#grace)) as number;
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

const MODE_CODE = { ENFORCE: "E", CHECK_ONLY: "C", SHADOW: "S" } as const;
const STATE_OF_CODE: Record<string, ReleaseState> = { C: "COMMITTED", X: "CANCELLED", E: "EXPIRED_CHARGED", R: "EXPIRED_REFUNDED" };

/** Most calls of one account a reserve or release script takes: a group's script holds Redis for its whole run. */
const MAX_GROUP = 50;
/** Most accounts one export_state.lua call exports (each may settle up to 1,000 expired reservations first). */
const MAX_EXPORT_GROUP = 32;

interface ExportCommand {
  accountId: string;
  limitIds: readonly string[];
  sweepMax: number;
}
interface ExportResult {
  settled: number;
  states: StateSnapshot;
}

interface Pending<C, R> {
  cmd: C;
  resolve: (r: R) => void;
  reject: (e: unknown) => void;
}

/** Empties `queue`, handing each account's calls to `send` in groups of at most MAX_GROUP, in order. */
function sendGroups<C, R>(queue: Map<string, Pending<C, R>[]>, send: (accountId: string, calls: Pending<C, R>[]) => void): void {
  const groups = [...queue];
  queue.clear();
  for (const [accountId, calls] of groups) for (let i = 0; i < calls.length; i += MAX_GROUP) send(accountId, calls.slice(i, i + MAX_GROUP));
}

const needRestore = (): ReserveResult => ({ outcome: "NEED_RESTORE", overage: false, replayed: false, now: 0, states: [] });

/** Whether two limits have the same description (describeLimit): the same values in every field it reads. A call
 * plan's limits share their period and blocks objects from call to call, so they compare by reference here; other
 * equal ones are told apart by their description string (a false "different" only costs describing it again). */
function sameDescription(a: CounterLimit, b: CounterLimit): boolean {
  return a.id === b.id && a.kind === b.kind && a.meter === b.meter && a.limit === b.limit && a.windowMs === b.windowMs && a.overage === b.overage && a.period === b.period && a.blocks === b.blocks;
}

/** A limit without its amount, as reserve.lua's one-string description: 12 fields joined by '|'. */
function describeLimit(l: CounterLimit): string {
  const p = l.period;
  const period =
    p === undefined ? "||||"
    : p.type === "fixed" ? `fixed|${p.bounds[0]}|${p.bounds[1]}|${p.bounds[2]}|${p.bounds[3]}`
    : p.type === "rolling" ? `rolling|${p.windowMs}|${p.bucketMs}||`
    : "none||||";
  return `${l.id}|${l.kind}|${l.meter}|${l.limit ?? ""}|${l.windowMs ?? ""}|${l.overage ? "1" : ""}|${period}|${l.blocks ? l.blocks.map(([s, e]) => `${s}-${e}`).join(",") : ""}`;
}

/**
 * One call's answer (reserve.lua): "code|reason|deniedLimitId|retryAfterMs|availableAt|reservationId|overage|replayed|
 * now|shadowReason" then "|<reply_state>" per limit. `sent` is the reservation id the call sent: the answer's id is that one, or (a replay) the
 * earlier reservation's. Either way the result carries a string of its own, not a slice cut out of the
 * reply: the id outlives the call (the in-flight gauge keeps it until release or expiry), and in V8 a slice keeps
 * its whole parent alive — here the script's reply, every answer of the group (test/contract/redis-reply-retention).
 */
function decodeReserve(reply: string, sent: string): ReserveResult {
  const f = new ReplyFields(reply);
  const code = f.next("|").string();
  const reason = f.next("|").string();
  const deniedId = f.next("|").string();
  const retry = f.next("|").number();
  const available = f.next("|").number();
  const reservationId = f.next("|").is(sent) ? sent : f.string();
  const result: ReserveResult = {
    outcome: code === "0" ? "ALLOWED" : code === "1" ? "DENIED" : "IDEMPOTENCY_MISMATCH",
    overage: f.next("|").is("1"),
    replayed: f.next("|").is("1"),
    now: f.next("|").number(),
    states: [],
  };
  const shadow = f.next("|").string();
  while (f.more()) result.states.push(decodeState(f.enter("|")));
  if (reason) result.reason = reason as DenyReasonName;
  if (shadow) result.shadowReason = shadow as DenyReasonName;
  if (deniedId) result.deniedLimitId = deniedId;
  if (retry !== -1) result.retryAfterMs = retry;
  if (available !== -1) result.availableAt = available;
  if (reservationId) result.reservationId = reservationId === sent ? sent : Buffer.from(reservationId).toString();
  return result;
}

/** The packed capacity parse_cap (lib.lua) reads; ids and products never contain ',' or ';' (validated names). */
function encodeCapacity(e: CapacityEntry): string {
  let out = `${e.base},${e.basePriority}`;
  for (const g of e.grants) out += `;${g.id},${g.amount},${g.priority},${g.validFrom},${g.validUntil ?? ""},${g.seq},${g.product}`;
  return out;
}

/** "<state>|<overage>|<meter>=<reserved>=<charged>,..." (lib.lua settle). */
function decodeSettled(raw: string): Pick<ReleaseResult, "state" | "reserved" | "charged" | "overage"> {
  const [code, overage, meters] = raw.split("|") as [string, string, string];
  const reserved: Record<string, bigint> = {};
  const charged: Record<string, bigint> = {};
  if (meters) {
    for (const m of meters.split(",")) {
      const [meter, r, c] = m.split("=") as [string, string, string];
      reserved[meter] = BigInt(r);
      charged[meter] = BigInt(c);
    }
  }
  return { state: STATE_OF_CODE[code]!, reserved, charged, overage: BigInt(overage) };
}

/** One reply_state (lib.lua), the range `f` entered: "limit,used,remaining,reset,overage,exceeded,overageTotal" then
 * ";id,amount,used,priority,expires,product" per source. */
function decodeState(f: ReplyFields): LimitState {
  const limit = f.next(",").bigint();
  const used = f.next(",").bigint();
  const remaining = f.next(",").bigint();
  const resetAt = f.next(",").number();
  const state: LimitState = { limit, used, remaining, overage: f.next(",").bigint(), exceeded: f.next(",").is("1") };
  if (resetAt >= 0) state.resetAt = resetAt;
  // overageTotal ends the first part: it is read when sources follow it.
  if (f.next(";").more()) {
    state.overageTotal = f.bigint();
    state.sources = [];
    while (f.more()) {
      const id = f.next(",").string();
      const amount = f.next(",").bigint();
      const u = f.next(",").bigint();
      const priority = f.next(",").number();
      const expiresAt = f.next(",").number();
      const s: SourceState = { id, amount, used: u, priority, product: f.next(";").string() };
      if (expiresAt >= 0) s.expiresAt = expiresAt;
      state.sources.push(s);
    }
  }
  f.leave();
  return state;
}

/**
 * Reads a script's reply field by field, in place: a number is read from the reply itself and only the strings a
 * result keeps are cut out of it (splitting made an array and a string per field, ~45 per call). Every value reads as
 * `Number(field)` / `BigInt(field)` would; plain integers (at most 15 digits, what the scripts write with '%d') are
 * read without cutting them out first.
 */
class ReplyFields {
  readonly #text: string;
  #pos = 0;
  #end: number;
  #outerEnd = 0;
  /** The field read last: [#start, #stop). */
  #start = 0;
  #stop = 0;

  constructor(text: string) {
    this.#text = text;
    this.#end = text.length;
  }

  /** Moves to the next field: up to the next `sep`, or the end of the range. */
  next(sep: string): this {
    this.#start = this.#pos;
    const i = this.#text.indexOf(sep, this.#pos);
    this.#stop = i === -1 || i > this.#end ? this.#end : i;
    if (this.#stop < this.#start) this.#stop = this.#start;
    this.#pos = this.#stop + 1;
    return this;
  }

  /** Whether another field follows the one read last, in the range. */
  more(): boolean {
    return this.#pos <= this.#end;
  }

  /** Reads the next field (up to `sep`) as a range of its own, its fields read one by one until leave(). */
  enter(sep: string): this {
    this.next(sep);
    this.#outerEnd = this.#end;
    this.#end = this.#stop;
    this.#pos = this.#start;
    return this;
  }

  /** Back to the range enter() left, at the field after the one entered. */
  leave(): void {
    this.#pos = this.#end + 1;
    this.#end = this.#outerEnd;
  }

  string(): string {
    return this.#text.slice(this.#start, this.#stop);
  }

  is(value: string): boolean {
    return this.#stop - this.#start === value.length && this.#text.startsWith(value, this.#start);
  }

  number(): number {
    const n = this.#plainInteger();
    return n ?? Number(this.string());
  }

  bigint(): bigint {
    const n = this.#plainInteger();
    return n === undefined ? BigInt(this.string()) : BigInt(n);
  }

  /** The field's value when it is an optional '-' and 1 to 15 digits (exact in a double), else undefined. */
  #plainInteger(): number | undefined {
    let i = this.#start;
    const negative = this.#text.charCodeAt(i) === 45; // '-'
    if (negative) i++;
    if (this.#stop - i < 1 || this.#stop - i > 15) return undefined;
    let n = 0;
    for (; i < this.#stop; i++) {
      const digit = this.#text.charCodeAt(i) - 48;
      if (digit < 0 || digit > 9) return undefined;
      n = n * 10 + digit;
    }
    return negative ? -n : n;
  }
}
