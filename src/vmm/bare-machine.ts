// The bare-metal machine: RAM at 0x8000_0000, an ACLINT at 0x0200_0000 and
// nothing else, as on the spike and QEMU virt machines. An ELF is loaded at its
// physical addresses and hart 0 starts in M-mode at its entry. The program
// talks to the host through HTIF (Berkeley host-target interface, as spike and
// the riscv-tests use it): a 64-bit `tohost` word holding
//   device (63:56) | command (55:48) | payload (47:0)
// device 0 command 0 with payload bit 0 set: exit with code payload >> 1;
// device 1 command 1: write the payload's low byte to the console.

import { instantiateCore, CORE_RESERVED_BYTES, type Core } from "../vcpu/core.js";
import { FramePool } from "../memory/frame-pool.js";
import { P2m } from "../memory/p2m.js";
import { GuestMemory } from "../memory/guest-memory.js";
import { MmioBus } from "../bus/mmio-bus.js";
import { Aclint, ACLINT_SIZE } from "../devices/irq/aclint.js";
import { Vcpu } from "../vcpu/vcpu.js";
import type { ElfImage } from "../loader/elf.js";
import { Jit, type JitOptions } from "../jit/jit.js";

export const BARE_RAM_BASE = 0x8000_0000n;
export const BARE_ACLINT_BASE = 0x0200_0000n;
/** Timer ticks per retired instruction: a 10 MHz timebase (as QEMU virt's) at a
 *  nominal 100 MIPS, so one tick every 10 instructions. Time is a function of
 *  the instruction stream alone: runs are deterministic. */
export const BARE_INSNS_PER_TICK = 10;
const SLICE = 1 << 20;

export class MachineError extends Error {}

export interface BareOptions {
  memBytes: number;
  /** Stop after this many instructions (undefined: no limit). */
  maxInsns?: bigint;
  /** Stop after this much wall-clock time in ms (undefined: no limit). */
  timeoutMs?: number;
  console: (bytes: Uint8Array) => void;
  /** Binary translation (undefined or false: interpreter only). */
  jit?: JitOptions | false;
}

export type BareResult =
  | { kind: "exit"; code: number }
  | { kind: "limit"; what: "instructions" | "time"; pc: bigint };

export class BareMachine {
  readonly core: Core;
  readonly vcpu: Vcpu;
  readonly jit: Jit | undefined;
  /** Guest RAM as the hypervisor and devices see it (bounds-checked, through the p2m). */
  readonly ram: GuestMemory;
  private readonly tohost: bigint;
  private readonly fromhost: bigint | undefined;

  constructor(private readonly elf: ElfImage, private readonly opts: BareOptions) {
    if (opts.memBytes < 4096 || opts.memBytes % 4096 !== 0) throw new MachineError("--mem must be a positive multiple of 4 KiB");
    const pool = new FramePool(CORE_RESERVED_BYTES);
    this.core = instantiateCore(pool.memory);
    const p2m = new P2m(pool, BARE_RAM_BASE, opts.memBytes);
    this.ram = new GuestMemory(p2m, pool.memory);
    const bus = new MmioBus();
    this.vcpu = new Vcpu(this.core, pool, 0, p2m, bus);
    // Image pages are shared frames: a store breaking that has the hart flush its TLB first.
    p2m.setTlbHolders([this.vcpu.hart + this.core.k.REQ_OFF], this.core.k.REQ_TLB_FLUSH);
    bus.register(BARE_ACLINT_BASE, ACLINT_SIZE, new Aclint(this.core, [this.vcpu.hart]));
    if (opts.jit) {
      this.jit = new Jit(this.core, pool, p2m, opts.jit);
      this.jit.attachHart(this.vcpu.hart);
    }

    const tohost = elf.symbol("tohost");
    if (tohost === undefined) throw new MachineError("the program has no `tohost` symbol: bare-metal mode needs HTIF to report results");
    if (!this.ram.isRam(tohost, 8)) throw new MachineError(`tohost at 0x${tohost.toString(16)} is not in guest RAM`);
    this.tohost = tohost;
    const fromhost = elf.symbol("fromhost");
    this.fromhost = fromhost !== undefined && this.ram.isRam(fromhost, 8) ? fromhost : undefined;

    this.load();
    const fn = this.core.fn;
    const h = this.vcpu.hart;
    this.vcpu.reset(elf.entry);
    fn.setTickInsns(h, BARE_INSNS_PER_TICK);
    fn.setSbiMode(h, 0);
    fn.setHtifTohost(h, tohost);
  }

  private load(): void {
    const end = BARE_RAM_BASE + BigInt(this.opts.memBytes);
    for (const s of this.elf.segments) {
      if (s.paddr < BARE_RAM_BASE || s.paddr + s.memsz > end) {
        throw new MachineError(
          `segment at 0x${s.paddr.toString(16)} (0x${s.memsz.toString(16)} bytes) lies outside guest RAM ` +
            `0x${BARE_RAM_BASE.toString(16)}-0x${(end - 1n).toString(16)}`,
        );
      }
      this.ram.write(s.paddr, s.data);
      // The rest of memsz is zero already: RAM frames are zeroed when first mapped.
    }
  }

  run(): BareResult {
    const started = Date.now();
    const { maxInsns, timeoutMs } = this.opts;
    for (;;) {
      let budget = SLICE;
      if (maxInsns !== undefined) {
        const left = maxInsns - this.vcpu.stats.instructions;
        if (left <= 0n) return { kind: "limit", what: "instructions", pc: this.vcpu.pc };
        if (left < BigInt(budget)) budget = Number(left);
      }
      const end = this.vcpu.runSlice(budget);
      switch (end.kind) {
        case "htif": {
          const code = this.handleHtif(end.value);
          if (code !== undefined) return { kind: "exit", code };
          break;
        }
        case "budget":
          if (timeoutMs !== undefined && Date.now() - started > timeoutMs) return { kind: "limit", what: "time", pc: this.vcpu.pc };
          break;
        case "halt":
          throw new MachineError(`the hart halted: trap handler at 0x${end.pc.toString(16)} faults on every instruction`);
        case "stuck":
          throw new MachineError(`the hart waits for an interrupt (WFI at 0x${end.pc.toString(16)}) but none can arrive`);
        case "sbi":
          throw new MachineError("internal error: SBI call in bare-metal mode");
      }
    }
  }

  /** Returns the exit code when the program finished. */
  private handleHtif(value: bigint): number | undefined {
    const device = value >> 56n;
    const command = (value >> 48n) & 0xffn;
    const payload = value & 0xffff_ffff_ffffn;
    if (value === 0n) return undefined;
    if (device === 0n && command === 0n && (payload & 1n) === 1n) {
      // Exit codes wider than a process status are kept nonzero.
      const code = Number(payload >> 1n);
      return code > 255 ? 255 : code;
    }
    this.ram.writeU64(this.tohost, 0n);
    if (device === 1n && command === 1n) {
      this.opts.console(Uint8Array.of(Number(payload & 0xffn)));
      // Acknowledge as spike does, for programs that wait for it.
      if (this.fromhost !== undefined) this.ram.writeU64(this.fromhost, (1n << 56n) | (1n << 48n));
      return undefined;
    }
    if (device === 0n && command === 0n) {
      throw new MachineError("the program used the HTIF system-call proxy (riscv-pk style), which tsvisor does not provide");
    }
    throw new MachineError(`unsupported HTIF request: device ${device}, command ${command}`);
  }
}
