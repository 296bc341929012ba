/**
 * Builds the dashboard into web/dist (checked in; `npm run build:web` regenerates it and a unit test fails when it
 * is stale). Relative asset URLs (`base: "./"`) so the same files work under /dashboard/ or at any other path and
 * origin; no inline scripts or styles, so the strict Content-Security-Policy needs no 'unsafe-inline' or hashes.
 */
import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

const root = fileURLToPath(new URL(".", import.meta.url));

export default defineConfig({
  root,
  base: "./",
  logLevel: "warn",
  build: {
    outDir: process.env.QUOTA_WEB_OUT_DIR ?? "dist",
    emptyOutDir: true,
    target: "es2022",
    // One JS and one CSS file, referenced by <script src> and <link>: nothing inline, nothing fetched at run time.
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    sourcemap: false,
    reportCompressedSize: false,
  },
});
