/* A tiny S-mode "kernel" for host-engine tests and benchmarks: it carries the
 * RISC-V Linux Image header (Documentation/arch/riscv/boot-image-header.rst),
 * so a VM boots it exactly as it boots Debian's kernel: loaded 2 MiB into RAM,
 * entered in S-mode with a0 = hartid, a1 = the device tree; other harts come
 * up through SBI HSM hart_start at _secondary with a1 = opaque. Each hart gets
 * its own 16 KiB stack; the boot hart clears .bss and calls bare_main(hartid),
 * a started hart calls bare_secondary(hartid, opaque). */
  .option norvc
  .section .text.head, "ax", @progbits
  .globl _start
_start:
  j _entry              /* code0 */
  .word 0               /* code1 */
  .dword 0x200000       /* text_offset: 2 MiB, as RV64 kernels ask */
  .dword _end - _start  /* image_size, .bss included */
  .dword 0              /* flags: little-endian */
  .word 2               /* version 0.2 */
  .word 0
  .dword 0
  .ascii "RISCV\0\0\0"  /* magic (deprecated) */
  .ascii "RSC\x05"      /* magic2 */
  .word 0

_entry:
  .option push
  .option norelax
  la gp, __global_pointer$
  .option pop
  call set_stack
  la t0, __bss_start
  la t1, __bss_end
1:
  bgeu t0, t1, 2f
  sd zero, 0(t0)
  addi t0, t0, 8
  j 1b
2:
  call bare_main
  j halt

  .globl _secondary
_secondary:
  .option push
  .option norelax
  la gp, __global_pointer$
  .option pop
  call set_stack
  call bare_secondary
halt:
  wfi
  j halt

/* sp = __stacks + (hartid + 1) * 16 KiB; a0 (hartid) kept. */
set_stack:
  la sp, __stacks
  addi t0, a0, 1
  slli t0, t0, 14
  add sp, sp, t0
  ret
