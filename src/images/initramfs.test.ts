import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { lstatSync, mkdtempSync, readFileSync, readlinkSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ImageError } from "./errors.js";
import { INIT_SCRIPT } from "./init.js";
import { buildInitramfs, commandArchive, etcFilesystems, shellQuote } from "./initramfs.js";
import { fakeRiscvExecutable, ko, withTree, xz } from "./test-fixtures.js";

const VERSION = "6.12.0-test";

// A kernel package's usr/lib/modules as Debian ships it.
const modulesTree = {
  [`${VERSION}/kernel/fs/ext4/ext4.ko.xz`]: xz(ko("ext4", { depends: ["jbd2", "mbcache"], aliases: ["fs-ext4"] })),
  [`${VERSION}/kernel/fs/jbd2/jbd2.ko.xz`]: xz(ko("jbd2")),
  [`${VERSION}/kernel/fs/mbcache.ko.xz`]: xz(ko("mbcache")),
  [`${VERSION}/kernel/drivers/virtio/virtio_mmio.ko.xz`]: xz(ko("virtio_mmio", { aliases: ["of:N*T*Cvirtio,mmio"] })),
  [`${VERSION}/kernel/fs/other.ko.xz`]: xz(ko("other", { vermagic: "5.10.0 SMP riscv" })),
  [`${VERSION}/modules.builtin`]: new TextEncoder().encode("kernel/drivers/virtio/virtio.ko\n"),
  [`${VERSION}/modules.order`]: new TextEncoder().encode("kernel/drivers/virtio/virtio_mmio.ko\nkernel/fs/mbcache.ko\nkernel/fs/jbd2/jbd2.ko\nkernel/fs/ext4/ext4.ko\nkernel/fs/other.ko\n"),
};

function withTempDir<T>(fn: (dir: string) => T): T {
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-initramfs-"));
  try {
    return fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Extracts all but device nodes (mknod may be refused in a container) with the host's cpio. */
function extract(archive: Uint8Array, dir: string): void {
  execFileSync("cpio", ["-idm", "--quiet", "--nonmatching", "dev/console"], { cwd: dir, input: archive });
}

async function rejects(p: Promise<unknown>, pattern: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => e instanceof ImageError && pattern.test(e.message) && !e.message.includes("\n"));
}

test("the initramfs holds init, busybox, the console, the modules and modprobe's index", async () => {
  await withTree(modulesTree, async (root) => {
    const busybox = fakeRiscvExecutable();
    const r = await buildInitramfs({ busybox, modulesRoot: root, kernelVersion: VERSION, modules: ["fs-ext4", "virtio_mmio", "virtio"] });
    assert.deepEqual(r.modules, ["kernel/fs/jbd2/jbd2.ko", "kernel/fs/mbcache.ko", "kernel/fs/ext4/ext4.ko", "kernel/drivers/virtio/virtio_mmio.ko"]);
    const listing = execFileSync("cpio", ["-itv", "--quiet"], { input: r.cpio, encoding: "utf8" });
    assert.match(listing, /^crw-------.* 5,\s+1 .* dev\/console$/m);
    withTempDir((dir) => {
      extract(r.cpio, dir);
      assert.equal(readFileSync(join(dir, "init"), "utf8"), INIT_SCRIPT);
      assert.equal(lstatSync(join(dir, "init")).mode & 0o777, 0o755);
      assert.deepEqual(new Uint8Array(readFileSync(join(dir, "bin/busybox"))), busybox);
      assert.equal(readlinkSync(join(dir, "bin/sh")), "busybox");
      for (const d of ["dev", "proc", "sys", "tmp", "run", "root", "mnt", "sbin", "usr/bin", "usr/sbin"]) assert.ok(lstatSync(join(dir, d)).isDirectory(), d);
      assert.equal(lstatSync(join(dir, "tmp")).mode & 0o7777, 0o1777);
      assert.equal(readFileSync(join(dir, "etc/filesystems"), "utf8"), "ext4\n", "the image's block filesystems, for mount without -t");
      const lib = join(dir, "lib/modules", VERSION);
      assert.deepEqual(new Uint8Array(readFileSync(join(lib, "kernel/fs/ext4/ext4.ko"))), ko("ext4", { depends: ["jbd2", "mbcache"], aliases: ["fs-ext4"] }));
      assert.equal(readFileSync(join(lib, "modules.dep"), "utf8"),
        "kernel/fs/jbd2/jbd2.ko:\nkernel/fs/mbcache.ko:\nkernel/fs/ext4/ext4.ko: kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko\nkernel/drivers/virtio/virtio_mmio.ko:\n");
      assert.match(readFileSync(join(lib, "modules.alias"), "utf8"), /^alias fs-ext4 ext4$/m);
      assert.match(readFileSync(join(lib, "modules.alias"), "utf8"), /^alias of:N\*T\*Cvirtio,mmio virtio_mmio$/m);
      assert.equal(readFileSync(join(lib, "modules.builtin"), "utf8"), "kernel/drivers/virtio/virtio.ko\n");
      assert.equal(readFileSync(join(lib, "modules.order"), "utf8"), "kernel/drivers/virtio/virtio_mmio.ko\nkernel/fs/mbcache.ko\nkernel/fs/jbd2/jbd2.ko\nkernel/fs/ext4/ext4.ko\n");
    });
    const again = await buildInitramfs({ busybox, modulesRoot: root, kernelVersion: VERSION, modules: ["fs-ext4", "virtio_mmio", "virtio"] });
    assert.deepEqual(again.cpio, r.cpio, "reproducible");
  });
});

test("/etc/filesystems lists the block filesystems the modules provide, common first, without nodev ones", () => {
  assert.equal(etcFilesystems(["fs-btrfs", "fs-overlay", "fs-9p", "fs-ext4", "fs-ext3", "fs-ext2", "fs-iso9660", "fs-vfat", "of:N*T*Cvirtio,mmio"]), "ext4\nvfat\niso9660\nbtrfs\n");
  assert.equal(etcFilesystems([]), "");
});

test("bad inputs: not busybox for RISC-V, an absent module, a module of another kernel", async () => {
  await withTree(modulesTree, async (root) => {
    const busybox = fakeRiscvExecutable();
    const x86 = busybox.slice();
    x86[18] = 62; // EM_X86_64
    await rejects(buildInitramfs({ busybox: x86, modulesRoot: root, kernelVersion: VERSION, modules: [] }), /^busybox: not a 64-bit RISC-V ELF executable/);
    await rejects(buildInitramfs({ busybox: new Uint8Array(10), modulesRoot: root, kernelVersion: VERSION, modules: [] }), /^busybox: not a 64-bit RISC-V/);
    // The default list: the first module the tree lacks is named.
    await rejects(buildInitramfs({ busybox, modulesRoot: root, kernelVersion: VERSION }), /no kernel module virtio_blk /);
    await rejects(buildInitramfs({ busybox, modulesRoot: root, kernelVersion: VERSION, modules: ["other"] }), /other\.ko: built for kernel 5\.10\.0, not 6\.12\.0-test$/);
    await rejects(buildInitramfs({ busybox, modulesRoot: root, kernelVersion: "../x", modules: [] }), /is not a directory name/);
    await rejects(buildInitramfs({ busybox, modulesRoot: root, kernelVersion: "7.0", modules: [] }), /cannot list kernel modules in .*7\.0: ENOENT/);
  });
});

const awkward = [
  "plain", "two words", "", " ", "it's", "'", "''", "\"double\"", "$HOME", "$(echo no)", "`echo no`", "back\\slash", "\\'",
  "line\nbreak", "tab\there", "*", "?", "[a]", "~", "-n", "--", "#comment", ";", "&&", "|", "é ü 日本 🙂", "trailing\n",
];

test("the command archive sets \"$@\" to the words exactly, through the host's sh", () => {
  withTempDir((dir) => {
    execFileSync("cpio", ["-idm", "--quiet"], { cwd: dir, input: commandArchive(awkward) });
    const argvFile = join(dir, "tsvisor/argv");
    assert.match(readFileSync(argvFile, "utf8"), /^set -- 'plain' 'two words' '' ' ' 'it'\\''s' /);
    // printf %s\0 so that words holding newlines come back intact.
    const out = execFileSync("sh", ["-c", `. ./argv; printf '%s\\0' "$@"`], { cwd: join(dir, "tsvisor"), encoding: "utf8" });
    assert.deepEqual(out.split("\0").slice(0, -1), awkward);
  });
  assert.equal(shellQuote("a'b"), `'a'\\''b'`);
});

test("with stdin, the command archive also holds /tsvisor/stdin, byte for byte", () => {
  const input = new Uint8Array([0, 1, 2, 255, 10, 13, 4]);
  withTempDir((dir) => {
    execFileSync("cpio", ["-idm", "--quiet"], { cwd: dir, input: commandArchive(["cat"], input) });
    assert.equal(readFileSync(join(dir, "tsvisor/argv"), "utf8"), "set -- 'cat'\n");
    assert.deepEqual(new Uint8Array(readFileSync(join(dir, "tsvisor/stdin"))), input);
  });
  const listing = execFileSync("cpio", ["-it", "--quiet"], { input: commandArchive(["true"]), encoding: "utf8" });
  assert.equal(listing, "tsvisor\ntsvisor/argv\n", "no stdin file without stdin");
});

test("a command archive refuses what a shell word cannot hold", () => {
  assert.throws(() => commandArchive([]), (e: unknown) => e instanceof ImageError && /no command/.test(e.message));
  assert.throws(() => commandArchive(["a\0b"]), (e: unknown) => e instanceof ImageError && /NUL byte/.test(e.message));
});
