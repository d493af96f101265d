/* Start-up for the benchmark programs: M-mode, no firmware.
 * Sets up gp/sp, turns the FPU on (mstatus.FS = Initial: FP instructions are
 * illegal while FS is Off, privileged spec 3.1.6.6), installs a trap vector
 * that reports the trap and fails, zeroes .bss, and exits through HTIF with
 * main's return value (0 = the kernel's self-check passed). */
  .section .text.init, "ax", @progbits
  .globl _start
_start:
  .option push
  .option norelax
  la gp, __global_pointer$
  .option pop
  la sp, __stack_top
  la t0, trap_entry
  csrw mtvec, t0
  li t0, (1 << 13)
  csrs mstatus, t0
  csrwi fcsr, 0
  la t0, __bss_start
  la t1, __bss_end
1:
  bgeu t0, t1, 2f
  sd zero, 0(t0)
  addi t0, t0, 8
  j 1b
2:
  call main
  call htif_exit
3:
  j 3b

  .align 2
trap_entry:
  csrr a0, mcause
  csrr a1, mepc
  csrr a2, mtval
  call trap_report
4:
  j 4b
