import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseDefinition } from "./definition.js";
import { ApiError } from "./errors.js";

const limits = { pcpus: 2, poolBytes: 1 << 30 };

test("a VM definition's shares: absolute HOSTDIR:GUESTDIR[,ro] of an existing directory; default none", () => {
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-def-share-"));
  assert.deepEqual(parseDefinition({ name: "a" }, limits).shares, []);
  assert.deepEqual(parseDefinition({ name: "a", shares: [`${dir}:/mnt/work`, `${dir}:/mnt/ro,ro`] }, limits).shares, [`${dir}:/mnt/work`, `${dir}:/mnt/ro,ro`]);
  for (const [spec, why] of [["rel:/mnt", /absolute path/], [`${join(dir, "nope")}:/mnt`, /does not exist/], [`${dir}:mnt`, /absolute path/]] as const) {
    assert.throws(() => parseDefinition({ name: "a", shares: [spec] }, limits), (e: unknown) => e instanceof ApiError && e.status === 400 && why.test(e.message));
  }
});
