/* Start-up for C test programs: stack, bss, main(); main's return value is the
 * result: 0 = pass, N = case N failed (reported through HTIF tohost). */
  .section .text.init
  .globl _start
_start:
  la sp, _stack_top
  li t0, (1 << 13)          /* mstatus.FS = Initial: C code may use FP */
  csrs mstatus, t0
  csrwi fcsr, 0
  la t0, __bss_start
  la t1, _end
1: bgeu t0, t1, 2f
  sd zero, 0(t0)
  addi t0, t0, 8
  j 1b
2: call main
  slli a0, a0, 1
  ori a0, a0, 1
  la t1, tohost
  sd a0, 0(t1)
3: j 3b

  .section .tohost, "aw", @progbits
  .align 6
  .globl tohost
tohost: .dword 0
  .size tohost, 8
  .align 6
  .globl fromhost
fromhost: .dword 0
  .size fromhost, 8
