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
const r = spawnSync(process.execPath, ["--test", ...extra, ...files], { cwd: root, stdio: "inherit" });
process.exit(r.status ?? 1);
