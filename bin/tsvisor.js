#!/usr/bin/env node
// Entry point of the `tsvisor` command: the compiled CLI lives in dist/src,
// and its bundle (scripts/build.mjs: CommonJS files, which start faster) in
// dist/bundle. The bundle is used when it is as new as the compiled code,
// so a `tsc` run without the bundle step never runs stale code.
// src/cli/launch.ts takes it from there.
//
// CommonJS (bin/package.json), as the bundle is: an ES module here would
// start Node's ES module loader, 5 ms of every command's start.
"use strict";
const { existsSync, statSync } = require("node:fs");
const { join } = require("node:path");
const { pathToFileURL } = require("node:url");

const root = join(__dirname, "..");
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
  const { launch } = require(join(bundle, "launch.cjs"));
  void launch(argv, { main: join(bundle, "main.cjs"), pcpuWorker: join(bundle, "pcpu-worker.cjs"), bundled: true });
} else {
  void import(pathToFileURL(join(dist, "src", "cli", "launch.js")).href).then(({ launch }) =>
    launch(argv, { main: join(dist, "src", "cli", "main.js"), pcpuWorker: join(dist, "src", "host", "pcpu-worker.js"), bundled: false }));
}
