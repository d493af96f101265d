// The virt machine driven directly (no Linux): a tiny S-mode "kernel" in the
// Linux boot-image format, hand-assembled so the test needs no cross toolchain,
// that reports its result through the test finisher (syscon).
import { test } from "node:test";
import assert from "node:assert/strict";
import { VirtMachine, type VmEnd } from "./virt-machine.js";
import { parseKernelImage } from "../arch/riscv/boot-image.js";

/** A boot image (Documentation/arch/riscv/boot-image-header.rst) whose code0
 *  jumps over the 64-byte header to `code`. */
function kernelImage(code: number[]) {
  const bytes = new Uint8Array(0x40 + 4 * code.length);
  const dv = new DataView(bytes.buffer);
  dv.setUint32(0x00, 0x0400006f, true); // j 0x40
  dv.setBigUint64(0x08, 0x200000n, true); // text_offset
  dv.setBigUint64(0x10, BigInt(bytes.length), true); // image_size
  dv.setUint32(0x20, 2, true); // version 0.2
  bytes.set(new TextEncoder().encode("RISCV\0\0\0RSC\x05"), 0x30);
  code.forEach((w, i) => dv.setUint32(0x40 + 4 * i, w, true));
  return parseKernelImage(bytes);
}

function runToEnd(vm: VirtMachine): VmEnd {
  for (let round = 0; round < 1000; round++) {
    const r = vm.runRound(10_000);
    if (r.kind === "ended") return r.end;
  }
  throw new Error("the guest did not finish");
}

test("an SBI IPI sent while the PLIC asserts the hart's SEIP leaves no SEIP behind once the line drops", () => {
  // Reading mip gives SEIP OR-ed with the PLIC's line; an IPI that wrote the
  // read value back latched it into the software-writable bit, and the hart
  // then took external interrupts with nothing to claim forever (a hang with
  // an RCU stall and a hard lockup under Linux with --cpus 2).
  const code = [
    0x0c0002b7, // lui   t0, 0xc000           PLIC
    0x00100313, // li    t1, 1
    0x0262a423, // sw    t1, 40(t0)           priority[10] (UART) = 1
    0x0c0023b7, // lui   t2, 0xc002
    0x0803839b, // addiw t2, t2, 128
    0x40000313, // li    t1, 1 << 10
    0x0063a023, // sw    t1, 0(t2)            enable source 10 in context 1 (hart 0, S)
    0x0c2013b7, // lui   t2, 0xc201
    0x0003a023, // sw    zero, 0(t2)          threshold of context 1 = 0
    0x10000e37, // lui   t3, 0x10000          UART
    0x00200313, // li    t1, 2
    0x006e00a3, // sb    t1, 1(t3)            IER = THRE: the UART's line goes high
    0x007358b7, // lui   a7, 0x735
    0x0498889b, // addiw a7, a7, 73           SBI IPI extension
    0x00000813, // li    a6, 0                send_ipi
    0x00100513, // li    a0, 1                hart_mask: hart 0 (itself)
    0x00000593, // li    a1, 0                hart_mask_base
    0x00000073, // ecall
    0x144024f3, // csrr  s1, sip
    0x000e00a3, // sb    zero, 1(t3)          IER = 0: the line goes low
    0x0043ae83, // lw    t4, 4(t2)            claim in context 1
    0x01d3a223, // sw    t4, 4(t2)            complete
    0x14402973, // csrr  s2, sip
    0x00100513, // li    a0, 1                case 1: SEIP was pending (the setup worked)
    0x2004ff13, // andi  t5, s1, 1 << 9
    0x020f0463, // beqz  t5, fail
    0x00200513, // li    a0, 2                case 2: the IPI is pending
    0x00297f13, // andi  t5, s2, 1 << 1
    0x000f0e63, // beqz  t5, fail
    0x00300513, // li    a0, 3                case 3: SEIP is gone with the line
    0x20097f13, // andi  t5, s2, 1 << 9
    0x000f1863, // bnez  t5, fail
    0x00005337, // lui   t1, 0x5
    0x5553031b, // addiw t1, t1, 0x555        0x5555: pass
    0x0140006f, // j     report
    0x01051313, // fail: slli t1, a0, 16
    0x00003fb7, // lui   t6, 0x3
    0x333f8f9b, // addiw t6, t6, 0x333
    0x01f36333, // or    t1, t1, t6           0x3333 | case << 16: fail
    0x001002b7, // report: lui t0, 0x100      test finisher
    0x0062a023, // sw    t1, 0(t0)
    0x0000006f, // j     .
  ];
  const vm = new VirtMachine({ memBytes: 64 << 20, harts: 1, kernel: kernelImage(code), cmdline: "", consoleOut: () => {} });
  assert.deepEqual(runToEnd(vm), { kind: "poweroff" });
});
