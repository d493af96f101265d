// Worker threads started with V8's code cache of their script, and the one
// way CommonJS code is wrapped for such a cache (cli/code-cache.ts too).
//
// A worker compiles its script before it can do anything: the pCPU worker's
// bundle took 4 ms to compile on an idle core and 8 ms beside the main
// thread's own start, on the way of every fast start. The build
// (scripts/build.mjs) leaves beside each bundled worker script the code V8
// made for its top level (X.cjs.v8); the worker then starts from a few
// lines of loader that compile the script with it. Without one (the
// compiled dist/src, a build without the bundle), a plain new Worker(script).
// V8 refuses a cache made by another Node or with other flags, and the
// script compiles as it would have.

import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { Worker, type WorkerOptions } from "node:worker_threads";

// Node's CommonJS module wrapper: a code cache belongs to this exact text.
const WRAP_HEAD = "(function (exports, require, module, __filename, __dirname) {";
const WRAP_TAIL = "\n})";

export function wrapCommonJs(code: string): string {
  return WRAP_HEAD + code + WRAP_TAIL;
}

export function startWorker(script: URL, options: WorkerOptions): Worker {
  const file = fileURLToPath(script);
  if (!file.endsWith(".cjs") || !existsSync(`${file}.v8`)) return new Worker(script, options);
  return new Worker(loaderFor(file), { ...options, eval: true });
}

/** The worker's first code: `file` run as Node would require() it, compiled with its cache. */
function loaderFor(file: string): string {
  return `"use strict";
const { readFileSync } = require("node:fs");
const { createRequire } = require("node:module");
const { dirname } = require("node:path");
const { Script } = require("node:vm");
const file = ${JSON.stringify(file)};
let cachedData;
try { cachedData = readFileSync(file + ".v8"); } catch {}
const code = readFileSync(file, "utf8");
const script = new Script(${JSON.stringify(WRAP_HEAD)} + code + ${JSON.stringify(WRAP_TAIL)}, { filename: file, cachedData });
const m = { exports: {} };
script.runInThisContext().call(m.exports, m.exports, createRequire(file), m, file, dirname(file));
`;
}
