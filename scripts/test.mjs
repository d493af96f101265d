// Runs the whole suite with Node's own test runner: every *.test.js / *.test.mjs
// that tsc wrote to dist/ (tests sit beside the code they test in src/, and the
// bare-metal ISA suite in tests/).
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const files = [];
(function walk(d) {
  for (const e of readdirSync(d, { withFileTypes: true })) {
    const p = join(d, e.name);
    if (e.isDirectory()) walk(p);
    else if (/\.test\.m?js$/.test(e.name)) files.push(p);
  }
})(join(root, "dist"));
files.sort();
const extra = process.argv.slice(2);
// Each file's process exits once its tests are done. Without this, a file
// whose tests all passed could keep the run waiting for ever: Node 20 was
// seen spinning at exit in its handle cleanup (FreeEnvironment ->
// CleanupHandles, no syscall, no JavaScript) after the tap tests of
// src/net/nat/tcp.test.ts, for 20 minutes, until killed.
// (Node 20.14 and later have the flag; an older one refuses it as a bad option.)
if (spawnSync(process.execPath, ["--test-force-exit", "-e", ""]).status === 0) extra.unshift("--test-force-exit");
const r = spawnSync(process.execPath, ["--test", ...extra, ...files], { cwd: root, stdio: "inherit" });
process.exit(r.status ?? 1);
