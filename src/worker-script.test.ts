// Worker threads started with their script's code cache (worker-script.ts).
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { Script } from "node:vm";
import { projectRoot } from "./project-root.js";
import { startWorker, wrapCommonJs } from "./worker-script.js";

const SCRIPT = `const { parentPort, workerData } = require("node:worker_threads");
const { basename } = require("node:path");
parentPort.postMessage({ file: basename(__filename), doubled: workerData.n * 2 });\n`;

function answer(script: string, n: number): Promise<unknown> {
  const worker = startWorker(pathToFileURL(script), { workerData: { n } });
  return new Promise((resolve, reject) => {
    worker.once("message", (m) => void worker.terminate().then(() => resolve(m)));
    worker.once("error", reject);
  });
}

test("a worker script runs the same with its code cache, without one, and with a cache V8 refuses", async () => {
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-worker-script-"));
  try {
    const script = join(dir, "w.cjs");
    writeFileSync(script, SCRIPT);
    assert.deepEqual(await answer(script, 21), { file: "w.cjs", doubled: 42 });
    writeFileSync(`${script}.v8`, new Script(wrapCommonJs(SCRIPT), { filename: script }).createCachedData());
    assert.deepEqual(await answer(script, 5), { file: "w.cjs", doubled: 10 });
    writeFileSync(`${script}.v8`, "not a code cache");
    assert.deepEqual(await answer(script, 7), { file: "w.cjs", doubled: 14 });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the build's code caches of the bundled worker scripts are accepted by this Node", (t) => {
  const bundle = join(projectRoot(), "dist", "bundle");
  if (!existsSync(join(bundle, "main.cjs"))) return t.skip("no bundle (esbuild not installed)");
  const scripts = readdirSync(bundle).filter((n) => n.endsWith(".cjs") && existsSync(join(bundle, `${n}.v8`)));
  assert.ok(scripts.includes("pcpu-worker.cjs"), scripts.join(", "));
  for (const name of scripts) {
    const file = join(bundle, name);
    const script = new Script(wrapCommonJs(readFileSync(file, "utf8")), { filename: file, cachedData: readFileSync(`${file}.v8`) });
    assert.equal(script.cachedDataRejected, false, name);
  }
});
