#!/usr/bin/env node
// Entry point of the `tsvisor` command: the compiled CLI lives in dist/src,
// and its bundle (scripts/build.mjs: CommonJS files, which start faster) in
// dist/bundle. The bundle is used when it is as new as the compiled code,
// so a `tsc` run without the bundle step never runs stale code.
// src/cli/launch.ts takes it from there.
import { existsSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import { fileURLToPath, pathToFileURL } from "node:url";
import { dirname, join } from "node:path";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const dist = join(root, "dist");
if (!existsSync(join(dist, "src", "cli", "main.js")) || !existsSync(join(root, "build", "core.wasm"))) {
  process.stderr.write("tsvisor: not built yet: run `npm run build` (or `npm start`) first\n");
  process.exit(1);
}
const mtime = (p) => statSync(p, { throwIfNoEntry: false })?.mtimeMs ?? 0;
const bundle = join(dist, "bundle");
const bundleTime = mtime(join(bundle, "main.cjs"));
const argv = process.argv.slice(2);
if (bundleTime > 0 && bundleTime >= mtime(join(dist, ".stamp"))) {
  const { launch } = createRequire(import.meta.url)(join(bundle, "launch.cjs"));
  await launch(argv, { main: join(bundle, "main.cjs"), pcpuWorker: join(bundle, "pcpu-worker.cjs"), bundled: true });
} else {
  const { launch } = await import(pathToFileURL(join(dist, "src", "cli", "launch.js")).href);
  await launch(argv, { main: join(dist, "src", "cli", "main.js"), pcpuWorker: join(dist, "src", "host", "pcpu-worker.js"), bundled: false });
}
