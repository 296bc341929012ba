/**
 * Offline validation of rendered manifests against the Kubernetes JSON schemas (kubernetes-models), the
 * prometheus-operator CRDs and the Gateway API CRDs (@kubernetes-models/*).
 */
import type { Manifest } from "./helm.ts";

const PACKAGES: Array<{ match: (group: string) => boolean; pkg: string }> = [
  { match: (g) => g === "monitoring.coreos.com", pkg: "@kubernetes-models/prometheus-operator" },
  { match: (g) => g === "gateway.networking.k8s.io", pkg: "@kubernetes-models/gateway-api" },
  { match: () => true, pkg: "kubernetes-models" },
];

interface ModelClass { new (data: unknown): { validate(): void } }

/** The model class for a manifest's apiVersion and kind; throws when none is known (an unknown kind is a bug too). */
export async function modelFor(m: Manifest): Promise<ModelClass> {
  const [group, version] = m.apiVersion.includes("/") ? m.apiVersion.split("/") : ["", m.apiVersion];
  const { pkg } = PACKAGES.find((p) => p.match(group!))!;
  const path = group ? `${pkg}/${group}/${version}` : `${pkg}/${version}`;
  const mod = (await import(path)) as Record<string, ModelClass>;
  const cls = mod[m.kind];
  if (!cls) throw new Error(`no schema for ${m.apiVersion} ${m.kind} in ${path}`);
  return cls;
}

/** Validates every manifest; returns the problems as "Kind/name: message". */
export async function validateManifests(manifests: Manifest[]): Promise<string[]> {
  const problems: string[] = [];
  for (const m of manifests) {
    try {
      const Model = await modelFor(m);
      new Model(m).validate();
    } catch (e) {
      problems.push(`${m.kind}/${m.metadata?.name}: ${(e as Error).message}`);
    }
  }
  return problems;
}
