import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseShareSpec, shareCmdline } from "./vm-devices.js";
import { UsageError } from "./size.js";

test("--share specs: tags by position, ,ro, the kernel command line init reads", () => {
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-sharespec-"));
  const a = parseShareSpec(`${dir}:/mnt/a`, 0);
  const b = parseShareSpec(`${dir}:/mnt/b,ro`, 1);
  assert.deepEqual(a, { hostDir: dir, guestDir: "/mnt/a", readOnly: false, tag: "share0" });
  assert.deepEqual(b, { hostDir: dir, guestDir: "/mnt/b", readOnly: true, tag: "share1" });
  assert.equal(shareCmdline([a, b]), "share0:/mnt/a,share1:/mnt/b");
  for (const bad of ["", ":/mnt", `${dir}:`, `${dir}:/a,b`, `${dir}:/a'b`, `${dir}:/a$b`]) assert.throws(() => parseShareSpec(bad, 0), UsageError, bad);
});
