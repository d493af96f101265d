// The virt machine's device tree, decompiled with dtc and checked against what
// Linux's drivers look for.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { virtFdt } from "./virt-fdt.js";
import { isaString } from "./isa.js";

const haveDtc = spawnSync("dtc", ["--version"]).status === 0;

function dts(blob: Uint8Array): string {
  const file = join(mkdtempSync(join(tmpdir(), "tsvisor-virt-")), "virt.dtb");
  writeFileSync(file, blob);
  const r = spawnSync("dtc", ["-I", "dtb", "-O", "dts", file], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  assert.doesNotMatch(r.stderr, /ERROR/);
  return r.stdout;
}

test("the ISA string lists exactly the core's extensions", () => {
  assert.equal(isaString(), "rv64imafdc_zicntr_zicsr_zifencei_zihintpause_zba_zbb_zbs_sstc");
});

test("two harts: cpus, interrupt wiring, memory, chosen and every device", { skip: !haveDtc && "dtc not installed" }, () => {
  const text = dts(virtFdt({
    harts: 2,
    ramSize: 512n << 20n,
    bootargs: "console=ttyS0",
    initrd: { start: 0x8400_0000n, end: 0x8480_0000n },
    virtioSlots: [0, 1],
  }));
  assert.match(text, /cpu@0 \{/);
  assert.match(text, /cpu@1 \{/);
  assert.match(text, /riscv,isa = "rv64imafdc_zicntr_zicsr_zifencei_zihintpause_zba_zbb_zbs_sstc";/);
  assert.match(text, /riscv,isa-extensions = "i\\0m\\0a\\0f\\0d\\0c\\0zicntr/);
  assert.match(text, /timebase-frequency = <0x989680>;/);
  assert.match(text, /memory@80000000 \{\s*device_type = "memory";\s*reg = <0x00 0x80000000 0x00 0x20000000>;/);
  assert.match(text, /linux,initrd-start = <0x00 0x84000000>;/);
  assert.match(text, /stdout-path = "\/soc\/serial@10000000";/);
  // CLINT: M-soft 3 and M-timer 7 for hart 0 (phandle 1) and hart 1 (phandle 2).
  assert.match(text, /interrupts-extended = <0x01 0x03 0x01 0x07 0x02 0x03 0x02 0x07>;/);
  // PLIC: M-ext 11 and S-ext 9 per hart, in the PLIC model's context order.
  assert.match(text, /interrupts-extended = <0x01 0x0b 0x01 0x09 0x02 0x0b 0x02 0x09>;/);
  assert.match(text, /riscv,ndev = <0x7f>;/);
  assert.match(text, /serial@10000000 \{[^}]*interrupts = <0x0a>;/);
  assert.match(text, /rtc@101000 \{[^}]*interrupts = <0x0b>;/);
  assert.match(text, /virtio_mmio@10002000 \{[^}]*interrupts = <0x02>;/);
  assert.match(text, /poweroff \{[^}]*value = <0x5555>;/);
  assert.match(text, /reboot \{[^}]*value = <0x7777>;/);
});

test("bad configurations are refused", () => {
  assert.throws(() => virtFdt({ harts: 0, ramSize: 1n << 20n, bootargs: "", virtioSlots: [] }), RangeError);
  assert.throws(() => virtFdt({ harts: 9, ramSize: 1n << 20n, bootargs: "", virtioSlots: [] }), RangeError);
  assert.throws(() => virtFdt({ harts: 1, ramSize: 1n << 20n, bootargs: "", virtioSlots: [8] }), RangeError);
});
