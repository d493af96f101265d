// Reading a run's kernel and initrd (run-linux.ts readInput).
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { LinuxRunError, readInput } from "./run-linux.js";

test("an initrd is read with the command's archive after it, 4-byte aligned as the initramfs format pads archives", () => {
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-read-input-"));
  try {
    const path = join(dir, "initrd");
    writeFileSync(path, Buffer.from("12345"));
    const extra = Uint8Array.from([0xaa, 0xbb]);
    assert.deepEqual([...readInput(path, "initrd", extra)], [0x31, 0x32, 0x33, 0x34, 0x35, 0, 0, 0, 0xaa, 0xbb]);
    writeFileSync(path, Buffer.from("1234"));
    assert.deepEqual([...readInput(path, "initrd", extra)], [0x31, 0x32, 0x33, 0x34, 0xaa, 0xbb]);
    assert.deepEqual([...readInput(path, "initrd")], [0x31, 0x32, 0x33, 0x34]);
    assert.throws(() => readInput(join(dir, "missing"), "initrd", extra), (e) => e instanceof LinuxRunError && e.message === `initrd ${join(dir, "missing")}: no such file`);
    assert.throws(() => readInput(dir, "initrd", extra), (e) => e instanceof LinuxRunError && e.message === `initrd ${dir}: is a directory`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
