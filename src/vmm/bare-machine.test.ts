// End to end: bare-metal programs built with the RISC-V cross compiler, run by
// `tsvisor run --bare` as a process. Skipped when riscv64-unknown-elf-gcc is
// missing (`npm test` installs it).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const bin = join(root, "bin", "tsvisor.js");
const CC = "riscv64-unknown-elf-gcc";
const haveCc = spawnSync(CC, ["--version"]).status === 0;
const dir = mkdtempSync(join(tmpdir(), "tsvisor-e2e-"));
after(() => rmSync(dir, { recursive: true, force: true }));

const LINK_LD = `
OUTPUT_ARCH("riscv")
ENTRY(_start)
SECTIONS {
  . = 0x80000000;
  .text : { *(.text.init) *(.text .text.*) }
  . = ALIGN(0x1000);
  .tohost : { *(.tohost) }
  . = ALIGN(0x1000);
  .data : { *(.rodata .rodata.* .srodata .srodata.* .data .data.* .sdata .sdata.* .sbss .sbss.* .bss .bss.*) }
  . = ALIGN(16);
  . = . + 0x4000;
  stack_top = .;
}`;

const HTIF_WORDS = `
  .section .tohost, "aw", @progbits
  .align 6
  .globl tohost
tohost: .dword 0
  .align 6
  .globl fromhost
fromhost: .dword 0
`;

/** Build `sources` (name -> text) into an ELF; returns its path. */
function build(name: string, sources: Record<string, string>): string {
  writeFileSync(join(dir, "link.ld"), LINK_LD);
  for (const [file, text] of Object.entries(sources)) writeFileSync(join(dir, file), text);
  const elf = join(dir, `${name}.elf`);
  const r = spawnSync(
    CC,
    ["-O2", "-march=rv64gc", "-mabi=lp64d", "-mcmodel=medany", "-ffreestanding", "-nostdlib", "-nostartfiles", "-T", "link.ld", ...Object.keys(sources), "-o", elf],
    { cwd: dir, encoding: "utf8" },
  );
  assert.equal(r.status, 0, r.stderr);
  return elf;
}

function tsvisor(...args: string[]) {
  return spawnSync(process.execPath, [bin, ...args], { encoding: "utf8", timeout: 60_000 });
}

test("a C program prints through HTIF and exits with its own code", { skip: !haveCc && `${CC} not installed` }, () => {
  const elf = build("hello", {
    "start.S": `
  .section .text.init
  .globl _start
_start:
  la sp, stack_top
  call main
  slli a0, a0, 1
  ori a0, a0, 1
  la t0, tohost
  sd a0, 0(t0)
1: j 1b
${HTIF_WORDS}`,
    "hello.c": `
#include <stdint.h>
extern volatile uint64_t tohost;
static void put(char c) {
  while (tohost) {}
  tohost = (1ull << 56) | (1ull << 48) | (uint8_t)c;
}
int main(void) {
  for (const char *s = "hello from C on tsvisor\\n"; *s; s++) put(*s);
  while (tohost) {}
  return 42;
}`,
  });
  const r = tsvisor("run", "--bare", elf);
  assert.equal(r.stdout, "hello from C on tsvisor\n");
  assert.equal(r.status, 42, r.stderr);
});

test("CLINT timer and software interrupts wake a hart in WFI", { skip: !haveCc && `${CC} not installed` }, () => {
  // Stage 1: mtimecmp = mtime + 1000, WFI; the timer interrupt (mcause MTI)
  // must arrive with mtime >= mtimecmp. Stage 2: msip = 1 (reads back), WFI;
  // the software interrupt (mcause MSI) arrives; clear it, print "ok", exit 0.
  // Any surprise exits with the stage number + 10.
  const elf = build("irq", {
    "irq.S": `
  .equ CLINT_MSIP, 0x02000000
  .equ CLINT_MTIMECMP, 0x02004000
  .equ CLINT_MTIME, 0x0200bff8
  .section .text.init
  .globl _start
_start:
  la t0, handler
  csrw mtvec, t0
  li s1, 0
  li t1, CLINT_MTIME
  ld t2, 0(t1)
  addi t2, t2, 1000
  li t3, CLINT_MTIMECMP
  sd t2, 0(t3)
  li t0, 0x80
  csrs mie, t0
  csrsi mstatus, 8
1: wfi
  j 1b

  .align 2
handler:
  csrr t0, mcause
  bnez s1, second
  li t1, 0x8000000000000007
  bne t0, t1, fail
  li t1, CLINT_MTIME
  ld t2, 0(t1)
  li t3, CLINT_MTIMECMP
  lw t4, 0(t3)
  lw t5, 4(t3)
  slli t5, t5, 32
  slli t4, t4, 32
  srli t4, t4, 32
  or t4, t4, t5
  bltu t2, t4, fail
  li t0, 0x80
  csrc mie, t0
  li s1, 1
  li t1, CLINT_MSIP
  li t0, 1
  sw t0, 0(t1)
  lw t2, 0(t1)
  bne t2, t0, fail
  li t0, 8
  csrs mie, t0
  mret
second:
  li t1, 0x8000000000000003
  bne t0, t1, fail
  li t1, CLINT_MSIP
  sw zero, 0(t1)
  la t5, tohost
  li t0, 0x0101000000000000 + 'o'
  sd t0, 0(t5)
2: ld t0, 0(t5)
  bnez t0, 2b
  li t0, 0x0101000000000000 + 'k'
  sd t0, 0(t5)
3: ld t0, 0(t5)
  bnez t0, 3b
  li t0, 1
  sd t0, 0(t5)
4: j 4b
fail:
  addi t0, s1, 10
  slli t0, t0, 1
  ori t0, t0, 1
  la t5, tohost
  sd t0, 0(t5)
5: j 5b
${HTIF_WORDS}`,
  });
  const r = tsvisor("run", "--bare", elf, "--stats", "--max-insns", "10000000");
  assert.equal(r.status, 0, `exit ${r.status}: ${r.stderr}`);
  assert.equal(r.stdout, "ok");
  assert.match(r.stderr, /wfi\s+\d+/);
  assert.match(r.stderr, /clint\s+\d+ reads, \d+ writes/);
});

test("a load from an address no device claims is an access fault in the guest", { skip: !haveCc && `${CC} not installed` }, () => {
  const elf = build("nodevice", {
    "nodevice.S": `
  .section .text.init
  .globl _start
_start:
  la t0, handler
  csrw mtvec, t0
  li a0, 0x10000000
  ld a1, 0(a0)
  li t0, (99 << 1) | 1   # the load must not complete
  j report
  .align 2
handler:
  csrr t0, mcause
  li t1, 5               # load access fault
  bne t0, t1, bad
  csrr t0, mtval
  bne t0, a0, bad
  li t0, 1               # pass
  j report
bad:
  li t0, (98 << 1) | 1
report:
  la t5, tohost
  sd t0, 0(t5)
1: j 1b
${HTIF_WORDS}`,
  });
  const r = tsvisor("run", "--bare", elf, "--stats");
  assert.equal(r.status, 0, `exit ${r.status}: ${r.stderr}`);
  assert.match(r.stderr, /mmio\s+1/);
});

test("time is virtual: a program that samples timer interrupts runs identically twice", { skip: !haveCc && `${CC} not installed` }, () => {
  // A busy loop counts iterations; 50 timer interrupts (each armed 997 ticks
  // ahead) fold the loop count and mtime into a checksum printed in hex. With
  // wall-clock time the counts would differ from run to run.
  const elf = build("determinism", {
    "det.S": `
  .equ CLINT_MTIMECMP, 0x02004000
  .equ CLINT_MTIME, 0x0200bff8
  .section .text.init
  .globl _start
_start:
  la t0, handler
  csrw mtvec, t0
  li s0, 0
  li s1, 0
  li s2, 0
  call arm
  li t0, 0x80
  csrs mie, t0
  csrsi mstatus, 8
1: addi s2, s2, 1
  j 1b
arm:
  li t1, CLINT_MTIME
  ld t2, 0(t1)
  addi t2, t2, 997
  li t3, CLINT_MTIMECMP
  sd t2, 0(t3)
  ret
  .align 2
handler:
  slli t0, s1, 5
  sub s1, t0, s1
  add s1, s1, s2
  li t1, CLINT_MTIME
  ld t2, 0(t1)
  add s1, s1, t2
  addi s0, s0, 1
  li t0, 50
  beq s0, t0, done
  call arm
  mret
done:
  la t5, tohost
  li t4, 60
2: srl t0, s1, t4
  andi t0, t0, 15
  addi t0, t0, '0'
  li t1, '9' + 1
  blt t0, t1, 3f
  addi t0, t0, 'a' - '0' - 10
3: li t1, 0x0101000000000000
  or t0, t0, t1
  sd t0, 0(t5)
4: ld t0, 0(t5)
  bnez t0, 4b
  addi t4, t4, -4
  bgez t4, 2b
  li t0, 1
  sd t0, 0(t5)
5: j 5b
${HTIF_WORDS}`,
  });
  const first = tsvisor("run", "--bare", elf, "--stats", "--max-insns", "50000000");
  const second = tsvisor("run", "--bare", elf, "--stats", "--max-insns", "50000000");
  assert.equal(first.status, 0, first.stderr);
  assert.match(first.stdout, /^[0-9a-f]{16}$/);
  assert.equal(second.stdout, first.stdout, "same checksum of interrupt timing");
  const insns = (s: string) => /instructions executed: (\d+)/.exec(s)?.[1];
  assert.ok(insns(first.stderr));
  assert.equal(insns(second.stderr), insns(first.stderr), "same instruction count");
});
