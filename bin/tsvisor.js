#!/usr/bin/env node
// Entry point of the `tsvisor` command: the compiled CLI lives in dist/, and
// its bundle (scripts/build.mjs: the same code in fewer files, which start
// faster) in dist/bundle/. The bundle is used when it is as new as the
// compiled code, so a `tsc` run without the bundle step never runs stale code.
import { existsSync, statSync } from "node:fs";
import { fileURLToPath, pathToFileURL } from "node:url";
import { dirname, join } from "node:path";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const compiled = join(root, "dist", "src", "cli", "main.js");
if (!existsSync(compiled) || !existsSync(join(root, "build", "core.wasm"))) {
  process.stderr.write("tsvisor: not built yet: run `npm run build` (or `npm start`) first\n");
  process.exit(1);
}
const mtime = (p) => statSync(p, { throwIfNoEntry: false })?.mtimeMs ?? 0;
const bundled = join(root, "dist", "bundle", "main.js");
const bundleTime = mtime(bundled);
const cli = bundleTime > 0 && bundleTime >= mtime(join(root, "dist", ".stamp")) ? bundled : compiled;
const { main } = await import(pathToFileURL(cli).href);
await main(process.argv.slice(2));
