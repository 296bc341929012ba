/**
 * Connects to the counter store's Redis: one server (`redis://`, `rediss://`) or a Redis Cluster
 * (`redis+cluster://[user:password@]host:port,host:port` — `rediss+cluster://` for TLS — or REDIS_CLUSTER_NODES).
 * Every key of an account carries the hash tag {a:<account>}, and every script declares its keys, so each script
 * runs in one slot of one shard.
 */
import { Cluster, Redis } from "ioredis";

export type RedisTarget =
  | { kind: "single"; url: string }
  | { kind: "cluster"; nodes: Array<{ host: string; port: number }>; username?: string; password?: string; tls: boolean };

/** Reads the target from the URL and/or the node list (config validates that at most one names a cluster). */
export function redisTarget(url: string, clusterNodes: readonly string[]): RedisTarget | null {
  if (clusterNodes.length > 0) {
    const fromUrl = url ? parseClusterUrl(url.replace(/^(rediss?):\/\//, "$1+cluster://")) : undefined;
    return { kind: "cluster", nodes: clusterNodes.map(parseNode), ...(fromUrl?.username ? { username: fromUrl.username } : {}), ...(fromUrl?.password ? { password: fromUrl.password } : {}), tls: fromUrl?.tls ?? false };
  }
  if (!url) return null;
  if (/^rediss?\+cluster:\/\//.test(url)) return parseClusterUrl(url);
  return { kind: "single", url };
}

function parseClusterUrl(url: string): Extract<RedisTarget, { kind: "cluster" }> {
  const m = /^(rediss?)\+cluster:\/\/(?:([^:@/]*)(?::([^@/]*))?@)?([^/?#]*)/.exec(url);
  if (!m) throw new Error("not a redis+cluster:// URL");
  const out: Extract<RedisTarget, { kind: "cluster" }> = { kind: "cluster", nodes: m[4]!.split(",").filter(Boolean).map(parseNode), tls: m[1] === "rediss" };
  if (m[2]) out.username = decodeURIComponent(m[2]);
  if (m[3]) out.password = decodeURIComponent(m[3]);
  return out;
}

function parseNode(s: string): { host: string; port: number } {
  const m = /^\[?([^\]]+?)\]?:(\d{1,5})$/.exec(s.trim());
  if (!m || Number(m[2]) < 1 || Number(m[2]) > 65535) throw new Error(`"${s}" is not host:port`);
  return { host: m[1]!, port: Number(m[2]) };
}

/** Same failure behaviour in both modes: fail fast while disconnected (the store deadline and the plan's failure
 * mode answer), one retry per request, reconnect with a capped back-off. No ioredis auto-pipelining in either mode:
 * the counter store already groups each account's calls of a tick into one script call, and holding the scripts for
 * another tick made the server and Redis alternate (measured: ~20 % fewer calls/s with it; ADR 33). */
export function connectRedis(target: RedisTarget): Redis | Cluster {
  const common = { maxRetriesPerRequest: 1, enableOfflineQueue: false, connectTimeout: 2000 } as const;
  if (target.kind === "single") {
    return new Redis(target.url, { ...common, enableAutoPipelining: false, retryStrategy: (times) => Math.min(times * 100, 1000) });
  }
  return new Cluster(target.nodes, {
    // Off on a Cluster: ioredis' auto-pipelining picks the slot from a command's first argument, which for a script
    // call is its key count, so concurrent calls of different accounts were batched to one node and failed on MOVED
    // (test/integration/redis-cluster.test.ts). Without it each command is routed by its declared keys.
    enableAutoPipelining: false,
    enableOfflineQueue: false,
    clusterRetryStrategy: (times) => Math.min(times * 100, 1000),
    redisOptions: {
      ...common,
      ...(target.username ? { username: target.username } : {}),
      ...(target.password ? { password: target.password } : {}),
      ...(target.tls ? { tls: {} } : {}),
    },
  });
}
