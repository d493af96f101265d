// The core and the compiled TypeScript must come from one build: the code
// reads the core's exports by name (scripts/build.mjs stampCore).

import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CoreBuildMismatch, checkCoreStamp, coreWasmPath } from "./core.js";
import { projectRoot } from "../project-root.js";

test("the built core is the one its stamp names, and another core is refused with the remedy", () => {
  const bytes = readFileSync(coreWasmPath());
  checkCoreStamp(bytes, join(projectRoot(), "dist", "core.sha256"));
  assert.ok(readFileSync(join(projectRoot(), "dist", "core.sha256"), "utf8").trim().length === 64, "a full build writes the stamp");

  const dir = mkdtempSync(join(tmpdir(), "tsvisor-core-stamp-"));
  try {
    const stamp = join(dir, "core.sha256");
    writeFileSync(stamp, `${"0".repeat(64)}\n`);
    assert.throws(() => checkCoreStamp(bytes, stamp), (e) => e instanceof CoreBuildMismatch && /is not the core dist\/ was compiled with .*npm run build/.test(e.message));
    // A tree without a stamp (built before there were stamps) is not checked.
    checkCoreStamp(bytes, join(dir, "missing"));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
