// Builds the CPU core (AssemblyScript -> build/core.wasm), the TypeScript
// (tsc -> dist/), the command's bundle (esbuild, dist/ -> dist/bundle/) and
// the tap backend's relay (C -> build/tap-relay, Linux only).
// Skips a step whose outputs are newer than its sources.
//   node scripts/build.mjs          everything
//   node scripts/build.mjs core     only the core (a changed core is refused by
//                                   dist/ until a full build: see stampCore)
//   node scripts/build.mjs relay    only the tap relay
//   node scripts/build.mjs bundle   only the bundle (of an already compiled dist/)
import { execFileSync, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { Script } from "node:vm";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const only = process.argv[2];

function newest(dir, exts) {
  let t = 0;
  if (!existsSync(dir)) return 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) { if (e.name !== "node_modules" && e.name !== "out") t = Math.max(t, newest(p, exts)); }
    else if (exts.some((x) => e.name.endsWith(x))) t = Math.max(t, statSync(p).mtimeMs);
  }
  return t;
}
const mtime = (p) => (existsSync(p) ? statSync(p).mtimeMs : 0);
const bin = (name) => join(root, "node_modules", ".bin", name);

function buildCore() {
  const out = join(root, "build", "core.wasm");
  if (mtime(out) > newest(join(root, "src", "core"), [".ts"]) && mtime(out) > mtime(join(root, "scripts", "build.mjs"))) return;
  mkdirSync(join(root, "build"), { recursive: true });
  process.stderr.write("building core.wasm\n");
  // The core runs on the VM's shared memory (imported, so the hypervisor owns
  // it and worker threads can share it) and never allocates: stub runtime.
  // The function table is imported too: the JIT installs translated code in it.
  execFileSync(bin("asc"), [
    "src/core/index.ts", "-o", "build/core.wasm",
    "--runtime", "stub", "--importMemory", "--sharedMemory", "--importTable",
    "--initialMemory", "32", "--maximumMemory", "65536",
    "--enable", "threads", "-O3", "--noAssert", "--converge",
  ], { cwd: root, stdio: "inherit" });
}

function buildTs() {
  const stamp = join(root, "dist", ".stamp");
  const src = Math.max(newest(join(root, "src"), [".ts", ".mts"]), newest(join(root, "bench"), [".ts"]), newest(join(root, "tests"), [".ts"]), mtime(join(root, "tsconfig.json")));
  if (mtime(stamp) > src) return;
  process.stderr.write("compiling TypeScript\n");
  execFileSync(bin("tsc"), ["-p", "tsconfig.json"], { cwd: root, stdio: "inherit" });
  mkdirSync(join(root, "dist"), { recursive: true });
  execFileSync("touch", [stamp]);
}

// The `tsvisor` command runs from a bundle of dist/ (bin/tsvisor.js), because
// Node loads ~120 separate modules at each start: resolving, reading and
// compiling them one by one took ~130 ms of `run -- true` on the main thread,
// and as much again in the pCPU worker it starts early.
// Each entry point is one CommonJS file: Node's ES module loader alone took
// 15 to 25 ms of a start, on the main thread as in each worker, and Node 20
// caches no ES module's code, while src/cli/code-cache.ts loads the CLI's
// file with V8's code cache. The commands' modules are still evaluated only
// when the command runs (esbuild turns an import() of bundled code into a call).
// Tests and benchmarks import dist/src/ as compiled.
//
// Entry points: the launcher, the CLI and every worker script, because a
// worker is started with new Worker(new URL("./X.js", import.meta.url)),
// which esbuild leaves as it is: it is pointed at the output X.cjs, in the
// same directory. That directory is two levels below the root, as
// dist/src/project-root.js is: projectRoot() relies on it (src/project-root.ts).
const BUNDLE_DIR = join(root, "dist", "bundle");
const BUNDLE_ENTRIES = {
  launch: "dist/src/cli/launch.js", // bin/tsvisor.js
  main: "dist/src/cli/main.js", // cli/launch.ts
  "pcpu-worker": "dist/src/host/pcpu-worker.js", // host/pcpu-pool.ts, cli/launch.ts
  "postcopy-worker": "dist/src/snapshot/migration/postcopy-worker.js", // snapshot/migration/receiver.ts
  "blk-iothread-worker": "dist/src/devices/virtio/blk-iothread-worker.js", // devices/virtio/blk-iothread.ts
  worker: "dist/src/devices/virtio/fs/worker.js", // devices/virtio/fs/device.ts
};

async function buildBundle() {
  const main = join(BUNDLE_DIR, "main.cjs");
  if (mtime(main) > mtime(join(root, "dist", ".stamp")) && mtime(main) > mtime(join(root, "scripts", "build.mjs"))) return;
  let esbuild;
  try {
    esbuild = await import("esbuild");
  } catch {
    process.stderr.write("no esbuild (npm ci installs it): dist/bundle skipped, so tsvisor runs from dist/src and starts slower\n");
    return;
  }
  process.stderr.write("bundling the command\n");
  // Built beside the bundle and moved into its place, so a tsvisor started
  // meanwhile finds the old bundle or none (and then dist/src), never half of one.
  const tmp = `${BUNDLE_DIR}.${process.pid}.tmp`;
  rmSync(tmp, { recursive: true, force: true });
  try {
    await bundleInto(esbuild, tmp);
    rmSync(BUNDLE_DIR, { recursive: true, force: true });
    renameSync(tmp, BUNDLE_DIR);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

const WORKER_URL = /new URL\(\s*["']\.\/([\w-]+)\.js["']\s*,\s*__bundle_url\s*\)/g;

async function bundleInto(esbuild, tmp) {
  await esbuild.build({
    absWorkingDir: root,
    entryPoints: BUNDLE_ENTRIES,
    outdir: tmp,
    outExtension: { ".js": ".cjs" },
    bundle: true,
    format: "cjs",
    platform: "node",
    target: "node20",
    packages: "external",
    sourcemap: "linked",
    // Whitespace only (names stay, for error names and stack traces): a
    // third smaller, so a start reads and compiles less. For a profile with
    // line numbers: rm -rf dist/bundle && NO_MINIFY=1 npm run build.
    minifyWhitespace: !process.env.NO_MINIFY,
    logLevel: "warning",
    // import.meta.url names the file, as in the ES modules (worker URLs, projectRoot).
    define: { "import.meta.url": "__bundle_url" },
    banner: { js: 'const __bundle_url = require("node:url").pathToFileURL(__filename).href;' },
  });
  for (const f of readdirSync(tmp).filter((n) => n.endsWith(".cjs"))) {
    const path = join(tmp, f);
    const code = readFileSync(path, "utf8");
    // Every worker script a bundled file starts must be there, or that worker
    // fails only when it is started: one missing from BUNDLE_ENTRIES is a build error.
    for (const m of code.matchAll(WORKER_URL)) {
      if (!existsSync(join(tmp, `${m[1]}.cjs`))) {
        process.stderr.write(`dist/bundle/${f} starts ./${m[1]}.js, which is not an entry point: add it to BUNDLE_ENTRIES in scripts/build.mjs\n`);
        throw new Error("bundle");
      }
    }
    // Code compiled by vm.Script (code-cache.ts) cannot import() (Node 20
    // has no loader for it there): a Node module must be imported statically.
    const dynamic = code.match(/[^\w$.]import\(\s*["'][^"']+["']\s*\)/);
    if (dynamic) {
      process.stderr.write(`dist/bundle/${f} calls ${dynamic[0].slice(1)}, which a bundle cannot run: import it statically\n`);
      throw new Error("bundle");
    }
    writeFileSync(path, code.replace(WORKER_URL, (_, name) => `new URL("./${name}.cjs", __bundle_url)`));
  }
  // Each worker script's top level compiled, for its thread to start with
  // (src/worker-script.ts): a worker has no run of its own to cache from, as
  // the CLI has (src/cli/code-cache.ts). Made by this Node, as the runs will
  // be; another refuses it and compiles.
  const { wrapCommonJs } = await import(pathToFileURL(join(root, "dist", "src", "worker-script.js")).href);
  for (const name of Object.keys(BUNDLE_ENTRIES).filter((n) => n !== "launch" && n !== "main")) {
    const path = join(tmp, `${name}.cjs`);
    const script = new Script(wrapCommonJs(readFileSync(path, "utf8")), { filename: path });
    writeFileSync(`${path}.v8`, script.createCachedData());
  }
}

// The tap backend needs an ioctl Node cannot make (src/backends/net/tap.ts).
// Without a C compiler everything else still works: --net tap then says why not.
function buildTapRelay() {
  if (process.platform !== "linux") return;
  const src = join(root, "src", "backends", "net", "tap-relay.c");
  const out = join(root, "build", "tap-relay");
  if (mtime(out) > mtime(src)) return;
  mkdirSync(join(root, "build"), { recursive: true });
  process.stderr.write("building tap-relay\n");
  const r = spawnSync("cc", ["-O2", "-Wall", "-Wextra", "-o", out, src], { stdio: "inherit" });
  if (r.error?.code === "ENOENT") {
    process.stderr.write("no C compiler (cc): build/tap-relay skipped, so --net tap will not work (install gcc)\n");
    return;
  }
  if (r.status !== 0) throw new Error("tap-relay");
}

// Gives free frames' pages back to the kernel (src/memory/native/). Without
// a C++ compiler or Node's headers the pool zeroes frames instead, and the
// process's resident size only grows (README, "Memory overcommit").
function buildReleasePages() {
  if (process.platform !== "linux") return;
  const src = join(root, "src", "memory", "native", "release-pages.cc");
  const out = join(root, "build", "release-pages.node");
  if (mtime(out) > mtime(src)) return;
  const headers = [join(dirname(process.execPath), "..", "include", "node"), "/usr/include/node"].find((d) => existsSync(join(d, "node.h")));
  if (!headers) {
    process.stderr.write("no Node headers (node.h): build/release-pages.node skipped, so freed guest memory stays in the process\n");
    return;
  }
  mkdirSync(join(root, "build"), { recursive: true });
  process.stderr.write("building release-pages.node\n");
  const tmp = `${out}.${process.pid}.tmp`;
  const r = spawnSync("c++", ["-std=c++17", "-O2", "-shared", "-fPIC", "-Wall", "-I", headers, "-o", tmp, src], { stdio: "inherit" });
  if (r.error?.code === "ENOENT") {
    process.stderr.write("no C++ compiler (c++): build/release-pages.node skipped, so freed guest memory stays in the process\n");
    return;
  }
  if (r.status !== 0) throw new Error("release-pages");
  execFileSync("mv", [tmp, out]);
}

// The compiled TypeScript reads the core's exports (offsets, constants) by
// name, so dist/ and build/core.wasm must come from one source tree. The core
// is built first; should tsc fail after it, the two would not match, and a
// guest could hang on a missing export. A full build that succeeded records
// the core it was made with (dist/core.sha256); src/vcpu/core.ts refuses
// another core with a message naming the remedy.
function stampCore() {
  const core = join(root, "build", "core.wasm");
  mkdirSync(join(root, "dist"), { recursive: true });
  const tmp = join(root, "dist", `core.sha256.${process.pid}.tmp`);
  writeFileSync(tmp, `${createHash("sha256").update(readFileSync(core)).digest("hex")}\n`);
  renameSync(tmp, join(root, "dist", "core.sha256"));
}

try {
  if (!only || only === "core") buildCore();
  if (!only || only === "ts") buildTs();
  if (!only || only === "ts" || only === "bundle") await buildBundle();
  if (!only) stampCore();
  if (!only || only === "relay") buildTapRelay();
  if (!only || only === "native") buildReleasePages();
} catch {
  process.stderr.write("build failed\n");
  process.exit(1);
}
