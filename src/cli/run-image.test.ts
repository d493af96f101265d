// `tsvisor run --image debian -- CMD` on a small system disk made here, so
// the default suite covers the system-disk paths (init's root mount and
// chroot, the overlays, fast start) without the 11-minute Debian system
// build (that one is in the opt-in e2e suite: images/debian-system.e2e.test.ts).
// The disk: images/small-system-fixture.ts.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ok, pullImage, tsvisor as runTsvisor, BOOT_TIMEOUT_MS, type Run } from "./test-tsvisor.js";
import { systemRecipe } from "../images/debian-system.js";
import { SMALL_SYSTEM_MARKER, plantSmallSystem } from "../images/small-system-fixture.js";

const work = mkdtempSync(join(tmpdir(), "tsvisor-run-image-"));
let cache = "";
after(() => rmSync(work, { recursive: true, force: true }));

before(() => {
  pullImage();
  cache = plantSmallSystem(work);
});

/** tsvisor with the test's cache. */
const tsvisor = (args: string[]): Promise<Run> => runTsvisor(args, "", { TSVISOR_CACHE: cache });

const RUN = ["run", "--image", "debian", "--mem", "192M", "--stats"];

test("run --image: the command runs chrooted in the system disk; the first run makes the fast-start snapshot, later ones restore it on a new overlay each; --no-snapshot and --disk-name boot cold", { timeout: BOOT_TIMEOUT_MS }, async () => {
  const first = await tsvisor([...RUN, "--", "sh", "-c", "cat /etc/marker; echo one > /root/written; exit 3"]);
  assert.equal(first.status, 3, first.stderr);
  assert.equal(first.stdout, SMALL_SYSTEM_MARKER);
  assert.match(first.stderr, /fast start: booted; snapshot .* written/);

  const second = await tsvisor([...RUN, "--", "sh", "-c", "cat /etc/marker; test -e /root/written && echo left-behind; echo two > /root/written; cat /root/written"]);
  assert.equal(ok(second), `${SMALL_SYSTEM_MARKER}two\n`, "the restored run writes to a disk of its own, without the first run's file");
  assert.match(second.stderr, /fast start: restored /);

  const cold = await tsvisor([...RUN, "--no-snapshot", "--", "cat", "/etc/marker"]);
  assert.equal(ok(cold), SMALL_SYSTEM_MARKER);
  assert.doesNotMatch(cold.stderr, /fast start/);

  // A kept disk changes from run to run: it never restores a snapshot.
  const a = await tsvisor([...RUN, "--disk-name", "kept", "--", "sh", "-c", "echo kept > /root/kept"]);
  ok(a);
  const b = await tsvisor([...RUN, "--disk-name", "kept", "--", "cat", "/root/kept"]);
  assert.equal(ok(b), "kept\n");
  for (const r of [a, b]) assert.doesNotMatch(r.stderr, /fast start/);
  assert.match(readFileSync(join(cache, "disks", "kept.qcow2.base"), "utf8"), new RegExp(systemRecipe()));
});
