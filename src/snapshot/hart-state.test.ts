import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { HART_OFFSETS } from "./hart-state.js";

test("the saved hart ranges match the core's hart block layout (src/core/hart.ts)", () => {
  const src = readFileSync(new URL("../../../src/core/hart.ts", import.meta.url), "utf8");
  for (const [name, off] of Object.entries(HART_OFFSETS)) {
    const m = new RegExp(`export const ${name}: u32 = (\\d+);`).exec(src);
    assert.ok(m, `${name} is no longer a plain offset in hart.ts`);
    assert.equal(Number(m[1]), off, `${name} moved: update snapshot/hart-state.ts and HART_LAYOUT`);
  }
});
