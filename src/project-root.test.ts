import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { projectRoot } from "./project-root.js";

test("projectRoot is the checkout: package.json, bin/tsvisor.js and src/ are there", () => {
  for (const f of ["package.json", join("bin", "tsvisor.js"), join("src", "project-root.ts")]) assert.ok(existsSync(join(projectRoot(), f)), f);
});
