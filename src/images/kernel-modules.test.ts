import { test } from "node:test";
import assert from "node:assert/strict";
import { gzipSync } from "node:zlib";
import { ImageError } from "./errors.js";
import { readModinfo } from "./modinfo.js";
import { buildKo, ko, withTree, xz } from "./test-fixtures.js";
import { ModuleIndex, aliasMatches, builtinNames, filterModulesOrder, modulesAlias, modulesDep, type KernelModule } from "./kernel-modules.js";

// The shape of Debian's ext4 and friends, compressed the ways packages ship them.
const tree = {
  "kernel/fs/ext4/ext4.ko.xz": xz(ko("ext4", { depends: ["jbd2", "mbcache", "crc16"], aliases: ["fs-ext4", "ext3", "fs-ext3"], softdep: "pre: crypto-crc32c" })),
  "kernel/fs/jbd2/jbd2.ko": ko("jbd2", { softdep: "pre: crypto-crc32c" }),
  "kernel/fs/mbcache.ko.gz": gzipSync(ko("mbcache")),
  "kernel/lib/crc16.ko": ko("crc16"),
  "kernel/crypto/crc32c_generic.ko": ko("crc32c_generic", { aliases: ["crypto-crc32c", "crc32c"] }),
  "kernel/drivers/block/virtio_blk.ko": ko("virtio_blk", { aliases: ["virtio:d00000002v*"] }),
  "kernel/drivers/char/hw_random/virtio-rng.ko": ko("virtio_rng", { aliases: ["virtio:d00000004v*"] }),
  "kernel/fs/unused.ko": ko("unused"),
};
const builtin = builtinNames("kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_ring.ko\n");

async function rejects(p: Promise<unknown>, pattern: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof ImageError, `expected ImageError, got ${String(e)}`);
    assert.match(e.message, pattern);
    assert.ok(!e.message.includes("\n"));
    return true;
  });
}

test(".modinfo of a module: name, depends, aliases, soft dependencies", () => {
  const info = readModinfo(ko("ext4", { depends: ["jbd2", "mbcache"], aliases: ["fs-ext4"], softdep: "pre: crypto-crc32c post: x" }), "ext4.ko");
  assert.equal(info.name, "ext4");
  assert.deepEqual(info.depends, ["jbd2", "mbcache"]);
  assert.deepEqual(info.aliases, ["fs-ext4"]);
  assert.deepEqual(info.softdeps, ["crypto-crc32c", "x"]);
  assert.match(info.vermagic!, /^6\.12\.0-test /);
  assert.deepEqual(readModinfo(ko("m"), "m.ko").depends, []); // "depends=" is empty, not [""]
  assert.deepEqual(readModinfo(buildKo(["softdep=gcm"]), "m.ko").softdeps, []); // no pre:/post:, as kmod
});

test("malformed modules are refused with one clear line", () => {
  const good = ko("m");
  const bad = (patch: (b: Uint8Array, v: DataView) => void, pattern: RegExp) => {
    const b = good.slice();
    patch(b, new DataView(b.buffer));
    assert.throws(() => readModinfo(b, "m.ko"), (e: unknown) => e instanceof ImageError && pattern.test(e.message) && e.message.startsWith("m.ko: "));
  };
  const shoff = Number(new DataView(good.buffer).getBigUint64(0x28, true));
  bad((b) => (b[0] = 0), /no ELF magic/);
  bad((b) => (b[4] = 1), /class 1, expected 64-bit/);
  bad((b) => (b[5] = 3), /data encoding/);
  bad((_, v) => v.setUint16(16, 2, true), /expected a relocatable object/);
  bad((_, v) => v.setBigUint64(0x28, 1n << 40n, true), /outside the file/);
  bad((_, v) => v.setBigUint64(0x28, 1n << 62n, true), /beyond any file/);
  bad((_, v) => v.setUint16(0x3c, 200, true), /run past the end/);
  bad((_, v) => v.setUint16(0x3e, 7, true), /name table index 7 out of range/);
  bad((_, v) => v.setUint16(0x3a, 40, true), /section header size 40/);
  bad((_, v) => v.setBigUint64(shoff + 2 * 64 + 32, 1n << 20n, true), /\.modinfo .* outside the file/);
  bad((_, v) => v.setUint32(shoff + 2 * 64, 999, true), /name offset 999/);
  bad((b) => b.set(new TextEncoder().encode("modinfx"), 64 + 12), /no \.modinfo section/);
  assert.throws(() => readModinfo(good.subarray(0, 40), "m.ko"), /m\.ko: not a valid kernel module: no ELF magic/);
  assert.throws(() => readModinfo(good.subarray(0, shoff + 64), "m.ko"), /run past the end/);
});

test("resolve: names, aliases and wildcards, with dependencies first; builtins noted", async () => {
  await withTree(tree, async (dir) => {
    const index = await ModuleIndex.fromDirectory(dir, builtin);
    const r = await index.resolve(["fs-ext4", "virtio:d00000002v00001AF4", "virtio_rng", "virtio-ring"]);
    const names = r.modules.map((m) => m.name);
    assert.deepEqual(names, ["jbd2", "mbcache", "crc16", "ext4", "virtio_blk", "virtio_rng", "crc32c_generic"]);
    assert.deepEqual(r.builtin, ["virtio-ring"]);
    assert.equal(r.modules.find((m) => m.name === "virtio_rng")!.path, "kernel/drivers/char/hw_random/virtio-rng.ko");
    assert.equal(r.modules.find((m) => m.name === "ext4")!.path, "kernel/fs/ext4/ext4.ko"); // .xz dropped: stored decompressed
    const ext4 = await index.contents(r.modules.find((m) => m.name === "ext4")!);
    assert.equal(readModinfo(ext4, "ext4").name, "ext4");
    const mbcache = await index.contents(r.modules.find((m) => m.name === "mbcache")!);
    assert.equal(readModinfo(mbcache, "mbcache").name, "mbcache");
  });
});

test("modules.dep lists the whole closure so busybox modprobe loads dependencies first", async () => {
  const files = {
    "kernel/a.ko": ko("a", { depends: ["b", "c"], aliases: ["fs-a"] }),
    "kernel/b.ko": ko("b", { depends: ["d"] }),
    "kernel/c.ko": ko("c", { depends: ["d"] }),
    "kernel/d.ko": ko("d"),
  };
  await withTree(files, async (dir) => {
    const { modules } = await (await ModuleIndex.fromDirectory(dir)).resolve(["a"]);
    const dep = modulesDep(modules);
    assert.equal(dep, "kernel/d.ko:\nkernel/b.ko: kernel/d.ko\nkernel/c.ko: kernel/d.ko\nkernel/a.ko: kernel/c.ko kernel/b.ko kernel/d.ko\n");
    // busybox modprobe: [module, deps...] reversed, loaded in that order.
    const line = dep.split("\n").find((l) => l.startsWith("kernel/a.ko:"))!;
    const [self, rest] = line.split(":");
    const loadOrder = [self, ...rest.trim().split(" ")].reverse();
    const loaded = new Set<string>();
    for (const path of loadOrder) {
      const m = modules.find((x) => x.path === path)!;
      for (const d of m.info.depends) assert.ok(loaded.has(`kernel/${d}.ko`), `${d} before ${m.name}`);
      loaded.add(path);
    }
    assert.equal(modulesAlias(modules), "# Aliases extracted from modules themselves.\nalias fs-a a\n");
    assert.equal(filterModulesOrder("kernel/x.ko\nkernel/b.ko\nkernel/a.ko\n", modules), "kernel/b.ko\nkernel/a.ko\nkernel/d.ko\nkernel/c.ko\n");
  });
});

test("a missing module, a missing dependency, a cycle and a broken file are clear errors", async () => {
  await withTree(tree, async (dir) => {
    const index = await ModuleIndex.fromDirectory(dir, builtin);
    await rejects(index.resolve(["nope"]), /no kernel module nope \(not a module name, an alias or built in\)/);
  });
  await withTree({ "kernel/a.ko": ko("a", { depends: ["gone"] }) }, async (dir) => {
    await rejects((await ModuleIndex.fromDirectory(dir)).resolve(["a"]), /module a \(wanted as a\) depends on gone, which is neither a module file nor built in/);
  });
  const cycle = { "kernel/a.ko": ko("a", { depends: ["b"] }), "kernel/b.ko": ko("b", { depends: ["c"] }), "kernel/c.ko": ko("c", { depends: ["a"] }) };
  await withTree(cycle, async (dir) => {
    await rejects((await ModuleIndex.fromDirectory(dir)).resolve(["a"]), /dependency cycle: a -> b -> c -> a$/);
  });
  await withTree({ "kernel/a.ko": ko("b") }, async (dir) => {
    await rejects((await ModuleIndex.fromDirectory(dir)).resolve(["a"]), /calls itself b, its file name says a/);
  });
  await withTree({ "kernel/a.ko.xz": new Uint8Array([1, 2, 3]) }, async (dir) => {
    await rejects((await ModuleIndex.fromDirectory(dir)).resolve(["a"]), /xz -dc .*a\.ko\.xz failed: xz: .*File format not recognized/);
  });
  await withTree({ "kernel/a.ko.xz": xz(ko("a")), "kernel/b.ko.xz": new Uint8Array([1, 2, 3]) }, async (dir) => {
    // An alias search reads every module: a corrupt one anywhere is reported.
    await rejects((await ModuleIndex.fromDirectory(dir)).resolve(["fs-a"]), /xz --robot --list failed: xz: .*b\.ko\.xz: Too small to be a valid \.xz file/);
  });
  await withTree({ "kernel/a.ko": new Uint8Array(100) }, async (dir) => {
    await rejects((await ModuleIndex.fromDirectory(dir)).resolve(["a"]), /a\.ko: not a valid kernel module: no ELF magic/);
  });
  await withTree({ "a/x.ko": ko("x"), "b/x.ko.xz": xz(ko("x")) }, async (dir) => {
    await rejects(ModuleIndex.fromDirectory(dir), /two files for module x/);
  });
  await rejects(ModuleIndex.fromDirectory("/nonexistent/tsvisor"), /cannot list kernel modules in \/nonexistent\/tsvisor: ENOENT/);
});

test("alias patterns match as fnmatch, with - and _ equal", () => {
  assert.ok(aliasMatches("virtio:d00000002v*", "virtio:d00000002v00001AF4"));
  assert.ok(!aliasMatches("virtio:d00000002v*", "virtio:d00000003v00001AF4"));
  assert.ok(aliasMatches("fs-ext4", "fs_ext4"));
  assert.ok(aliasMatches("pci:v*d[0-9]?", "pci:v1d7x"));
  assert.ok(!aliasMatches("pci:v*d[!0-9]", "pci:v1d7"));
  assert.ok(aliasMatches("a.b", "a.b") && !aliasMatches("a.b", "axb"));
  assert.ok(!aliasMatches("ext4", "ext4x"));
});

test("module names from paths: suffixes dropped, - as _", () => {
  const m: KernelModule = { name: "x", path: "kernel/x.ko", info: { depends: [], aliases: [], softdeps: [] } };
  assert.equal(modulesDep([m]), "kernel/x.ko:\n");
  assert.deepEqual([...builtinNames("kernel/fs/nls/nls_iso8859-1.ko\n\nkernel/mm/zbud.ko\n")], ["nls_iso8859_1", "zbud"]);
});
