import { defaultServerConditions } from "vite";
import { defineConfig } from "vitest/config";

export default defineConfig({
  // Workspace packages (packages/*) are imported by name from their TypeScript sources through this export
  // condition (their published `default` is the built dist/); tsconfig.json has the same customConditions.
  ssr: { resolve: { conditions: ["@quota-authority/source", ...defaultServerConditions] } },
  test: {
    include: ["test/**/*.test.ts"],
    // Integration and e2e files each create their own database and Redis key prefix, so files run in parallel.
    pool: "forks",
    testTimeout: 30_000,
    hookTimeout: 60_000,
    reporters: ["default", "./test/support/summary-reporter.ts"],
  },
});
