// The `tsvisor` command's bundle, loaded with V8's code cache.
//
// Node 20 keeps no compile cache of its own (module.enableCompileCache came
// with Node 22.1), so every start parsed and compiled the bundle again:
// about 45 ms of `run -- true`'s 215 ms here, more than the restore and the
// host together. bin/tsvisor.js loads the CLI's CommonJS bundle
// (dist/bundle/main.cjs, scripts/build.mjs) through vm.Script, with the code
// V8 produced for it in an earlier run of the same command when there is
// one, and writes that code at exit when there was none (or V8 refused it).
// Written at exit, not after compiling, so it holds every function the
// command ran, not only the top level. One cache file per command: `run`
// and `vm` run different code.
//
// The cache sits in tsvisor's cache directory (images/image-cache.ts):
// <cache>/code/<command>-<key>.v8. V8 checks its own version, its flags and
// a checksum of the data, but of the source only its length: the key ties a
// cache to the bundle file it was made from (its size, modification time
// and inode, as fast-start.ts imageIdentity ties a snapshot to its image:
// a build writes a new file, an edit changes the time; no 1.3 MB digest at
// every start), and to the Node that made it.
// Nothing here is worth an error: a cache that cannot be read or written
// only costs the compile it would have saved.

import { mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { Script } from "node:vm";
import { wrapCommonJs } from "../worker-script.js";
import { defaultCacheDir } from "../images/image-cache.js";

/** Commands with a cache of their own; any other word shares "other". */
const COMMANDS = new Set(["run", "vm", "host", "image", "disk"]);

/** Where the code cache of `command` for the bundle `file` is kept. */
export function codeCachePath(file: string, command: string | undefined, cacheDir = defaultCacheDir()): string {
  const tag = command !== undefined && COMMANDS.has(command) ? command : "other";
  const s = statSync(file, { bigint: true });
  const key = [s.size, s.mtimeNs, s.ino].map((n) => n.toString(36)).join(".");
  return join(cacheDir, "code", `${tag}-${process.version}-${key}.v8`);
}

/**
 * Run the CommonJS file `file` as Node's require() would (its own `require`,
 * `module`, `__filename`), compiled with the code cache of `command`, and
 * return its exports.
 */
export function loadWithCodeCache(file: string, command: string | undefined, cacheDir?: string): Record<string, unknown> {
  const cachePath = codeCachePath(file, command, cacheDir);
  const source = readFileSync(file, "utf8");
  let cachedData: Buffer | undefined;
  try {
    cachedData = readFileSync(cachePath);
  } catch {
    cachedData = undefined;
  }
  const script = new Script(wrapCommonJs(source), { filename: file, cachedData });
  if (cachedData === undefined || script.cachedDataRejected) process.once("exit", () => saveCodeCache(script, cachePath));
  const module = { exports: {} as Record<string, unknown> };
  const run = script.runInThisContext() as (...args: unknown[]) => void;
  run.call(module.exports, module.exports, createRequire(file), module, file, dirname(file));
  return module.exports;
}

/** The code V8 has for `script` now, into `path` (renamed into place: runs
 *  ending together write whole files), and older caches of the command removed. */
function saveCodeCache(script: Script, path: string): void {
  const dir = dirname(path);
  const name = path.slice(dir.length + 1);
  const tag = name.slice(0, name.indexOf("-") + 1);
  try {
    mkdirSync(dir, { recursive: true });
    const partial = `${path}.${process.pid}`;
    writeFileSync(partial, script.createCachedData());
    renameSync(partial, path);
    for (const other of readdirSync(dir)) {
      if (other.startsWith(tag) && other.endsWith(".v8") && other !== name) rmSync(join(dir, other), { force: true });
    }
  } catch {
    // A read-only or full cache directory: the next run compiles again.
  }
}
