// The DTB writer checked by the reference tool: Debian's dtc decompiles what we
// wrote (npm test installs device-tree-compiler).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { writeFdt, node, u32, u64, str, empty, bytes } from "./fdt.js";

const haveDtc = spawnSync("dtc", ["--version"]).status === 0;

function decompile(blob: Uint8Array): string {
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-fdt-"));
  const file = join(dir, "t.dtb");
  writeFileSync(file, blob);
  const r = spawnSync("dtc", ["-I", "dtb", "-O", "dts", file], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout;
}

test("a tree written by writeFdt decompiles with dtc to the same nodes and values", { skip: !haveDtc && "dtc not installed" }, () => {
  const tree = node("", { "#address-cells": u32(2), "#size-cells": u32(2), compatible: str("riscv-virtio") }, [
    node("chosen", { bootargs: str("console=ttyS0 earlycon"), "linux,initrd-start": u64(0x8800_0000n) }),
    node("memory@80000000", { device_type: str("memory"), reg: u64(0x8000_0000n, 0x2000_0000n) }),
    node("soc", { ranges: empty(), compatible: str("simple-bus") }, [
      node("intc", { "interrupt-controller": empty(), phandle: u32(1), compatible: str("riscv,cpu-intc", "riscv,x") }),
      node("blob", { data: bytes(Uint8Array.of(1, 2, 3)) }),
    ]),
  ]);
  const dts = decompile(writeFdt(tree));
  assert.match(dts, /#address-cells = <0x02>;/);
  assert.match(dts, /compatible = "riscv-virtio";/);
  assert.match(dts, /bootargs = "console=ttyS0 earlycon";/);
  assert.match(dts, /linux,initrd-start = <0x00 0x88000000>;/);
  assert.match(dts, /memory@80000000 \{\s*device_type = "memory";\s*reg = <0x00 0x80000000 0x00 0x20000000>;/);
  assert.match(dts, /interrupt-controller;/);
  assert.match(dts, /compatible = "riscv,cpu-intc\\0riscv,x";/);
  assert.match(dts, /data = \[01 02 03\];/);
  assert.match(dts, /phandle = <0x01>;/);
});

test("the header, alignment and string deduplication follow the DTB format", () => {
  const blob = writeFdt(node("", { a: u32(1) }, [node("x", { a: u32(2), bb: str("y") }), node("z", { a: u32(3) })]), 3);
  const dv = new DataView(blob.buffer);
  assert.equal(dv.getUint32(0), 0xd00dfeed);
  assert.equal(dv.getUint32(4), blob.length, "totalsize");
  assert.equal(dv.getUint32(8) % 4, 0, "structure block aligned");
  assert.equal(dv.getUint32(16) % 8, 0, "reservation block aligned");
  assert.equal(dv.getUint32(20), 17, "version");
  assert.equal(dv.getUint32(28), 3, "boot_cpuid_phys");
  const strings = new TextDecoder().decode(blob.subarray(dv.getUint32(12), dv.getUint32(12) + dv.getUint32(32)));
  assert.equal(strings, "a\0bb\0", "each property name stored once");
});
