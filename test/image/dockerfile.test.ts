/**
 * The image cannot be built here (no registry), so this checks what can be checked from the Dockerfile itself: a
 * pinned Node 24 slim base, production-only dependencies, a non-root uid that matches the chart, the
 * `quota-authority serve` entrypoint, and that everything it copies exists and nothing it needs is ignored.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";
import { ROOT } from "../charts/helm.ts";

const dockerfile = readFileSync(join(ROOT, "Dockerfile"), "utf8");
const lines = dockerfile.split("\n").map((l) => l.trim()).filter((l) => l && !l.startsWith("#"));
const stages = lines.filter((l) => l.startsWith("FROM "));
const final = lines.slice(lines.lastIndexOf(stages.at(-1)!));

describe("Dockerfile", () => {
  it("is multi-stage on a pinned Node 24 slim base (exact version tag or digest, never a floating tag)", () => {
    expect(stages.length).toBeGreaterThanOrEqual(2);
    for (const s of stages) expect(s).toMatch(/^FROM node:24\.\d+\.\d+-[a-z]+-slim(@sha256:[a-f0-9]{64})?( AS \w+)?$/);
  });

  it("installs production dependencies only, with npm ci, in a build stage", () => {
    expect(lines.some((l) => /^RUN npm ci --omit=dev\b/.test(l))).toBe(true);
    expect(final.some((l) => /npm (ci|install)|apt-get/.test(l))).toBe(false);
  });

  it("runs as the non-root uid/gid the chart sets", () => {
    const user = final.find((l) => l.startsWith("USER "))!;
    expect(user).toBe("USER 10001:10001");
    const values = parse(readFileSync(join(ROOT, "charts/quota-authority/values.yaml"), "utf8")) as Record<string, any>;
    expect(values.securityContext.runAsUser).toBe(10001);
    expect(values.podSecurityContext.runAsGroup).toBe(10001);
  });

  it("enters through `quota-authority serve`, the package's own bin", () => {
    expect(final).toContain('ENTRYPOINT ["quota-authority"]');
    expect(final).toContain('CMD ["serve"]');
    const pkg = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { bin: Record<string, string> };
    expect(pkg.bin["quota-authority"]).toBe("bin/quota-authority");
    expect(final.some((l) => l.includes("ln -s /app/bin/quota-authority /usr/local/bin/quota-authority"))).toBe(true);
    // The chart's probes and helm test run this file inside the image.
    expect(existsSync(join(ROOT, "src/cli/health.ts"))).toBe(true);
  });

  it("copies only paths that exist, and .dockerignore excludes none of them", () => {
    const ignored = readFileSync(join(ROOT, ".dockerignore"), "utf8").split("\n").map((l) => l.trim()).filter((l) => l && !l.startsWith("#"));
    for (const l of lines.filter((x) => x.startsWith("COPY ") && !x.includes("--from="))) {
      const sources = l.split(/\s+/).slice(1, -1);
      for (const src of sources) {
        expect(existsSync(join(ROOT, src)), src).toBe(true);
        expect(ignored.some((i) => src === i || src.startsWith(`${i}/`)), `${src} is ignored`).toBe(false);
      }
    }
    for (const must of ["node_modules", ".git", "test", ".tools"]) expect(ignored).toContain(must);
  });
});
