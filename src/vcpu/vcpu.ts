// A vCPU: one hart of the core plus the hypervisor's exit loop for it.
//
// runSlice() calls the core's run() and handles the exits every machine treats
// alike (MMIO through the bus, p2m faults through the memory manager, WFI by
// advancing virtual time to the next timer deadline). Exits that belong to the
// machine (HTIF, SBI, halt, the end of a slice) are returned to it.

import { asU64, runMarked, type Core } from "./core.js";
import type { MmioBus } from "../bus/mmio-bus.js";
import { P2m, P2mFault } from "../memory/p2m.js";
import { ExitStats } from "./exit-stats.js";
import type { FramePool } from "../memory/frame-pool.js";

export type SliceEnd =
  | { kind: "budget" }
  | { kind: "htif"; value: bigint }
  | { kind: "sbi" }
  | { kind: "halt"; pc: bigint }
  /** The machine asked the vCPU to stop (requestStop), e.g. on power-off. */
  | { kind: "stop" }
  /** WFI with nothing pending, for a machine that sleeps on the host (idle "exit"). */
  | { kind: "wfi" }
  /** WFI with no interrupt that could ever arrive (no timer armed, or its
   *  compare already reached while mie keeps it disabled). */
  | { kind: "stuck"; pc: bigint };

export class GuestFault extends Error {}

/** What a WFI with no interrupt pending does: jump virtual time to the next
 *  timer deadline (deterministic machines), or end the slice so the machine
 *  can sleep on the host until something happens (real-time machines). */
export type IdlePolicy = "advance-time" | "exit";

const U64_MAX = 0xffff_ffff_ffff_ffffn;
/** Consecutive runs that retire nothing: a trap handler whose own first
 *  instruction exits and then faults (an MMIO access where no device is)
 *  restarts forever one exit at a time, which the core's in-run trap-storm
 *  limit cannot see. An MMIO access normally retires on its second run. */
const NO_PROGRESS_LIMIT = 100_000;

export class Vcpu {
  readonly hart: number;
  readonly stats = new ExitStats();
  private readonly memory: WebAssembly.Memory;
  private readonly pool: FramePool;
  private readonly hartFrames: number;
  private view: DataView;

  constructor(
    readonly core: Core,
    pool: FramePool,
    readonly hartId: number,
    private readonly p2m: P2m,
    private readonly bus: MmioBus,
    private readonly idle: IdlePolicy = "advance-time",
    owner?: number,
  ) {
    this.memory = pool.memory;
    this.pool = pool;
    this.hartFrames = Math.ceil(core.fn.hartStateSize() / 4096);
    this.hart = pool.allocContiguous(this.hartFrames, owner);
    this.view = new DataView(this.memory.buffer);
    core.fn.setP2m(this.hart, p2m.table, p2m.baseGfn, BigInt(p2m.count));
  }

  // The run record, read through a view that follows memory growth (a grown
  // shared memory has a new, longer buffer; old views stay at the old length).
  private record(): DataView {
    if (this.view.byteLength !== this.memory.buffer.byteLength) this.view = new DataView(this.memory.buffer);
    return this.view;
  }
  /** A field of the run record (RUN_*_OFF), e.g. an exit's reason or address. */
  runRecord(off: number): bigint {
    return this.rec(off);
  }

  /** Give the hart block back to the pool; the vCPU is unusable after. */
  release(): void {
    this.pool.freeContiguous(this.hart, this.hartFrames);
  }

  private rec(off: number): bigint {
    return this.record().getBigUint64(this.hart + off, true);
  }
  private setRec(off: number, v: bigint): void {
    this.record().setBigUint64(this.hart + off, v, true);
  }

  reset(entry: bigint): void {
    this.core.fn.hartReset(this.hart, BigInt(this.hartId), entry);
  }

  private stopRequested = false;

  /** End the current slice at the next exit (a device decided the machine's fate). */
  requestStop(): void {
    this.stopRequested = true;
  }

  get pc(): bigint {
    return asU64(this.core.fn.getPc(this.hart));
  }

  /** Run until an exit the machine must see, or until `budget` instructions. */
  runSlice(budget: number): SliceEnd {
    const { fn, k } = this.core;
    let noProgress = 0;
    for (;;) {
      const reason = runMarked(this.core, this.pool.words, this.hart, budget);
      const retired = this.rec(k.RUN_INSNS_OFF);
      if (retired !== 0n) noProgress = 0;
      else if (++noProgress >= NO_PROGRESS_LIMIT) {
        this.stats.count("halt");
        return { kind: "halt", pc: this.pc };
      }
      this.stats.instructions += retired;
      budget -= Number(retired);
      switch (reason) {
        case k.EXIT_MMIO_READ:
        case k.EXIT_MMIO_WRITE:
          this.stats.count("mmio");
          this.handleMmioExit(reason === k.EXIT_MMIO_WRITE);
          break;
        case k.EXIT_P2M_FAULT:
          this.stats.count("p2m-fault");
          this.handleP2mFault();
          break;
        case k.EXIT_WFI: {
          this.stats.count("wfi");
          if (fn.wakeupPending(this.hart)) break;
          if (this.idle === "exit") return { kind: "wfi" };
          const deadline = asU64(fn.timerDeadline(this.hart));
          // No compare armed, or one already reached whose interrupt mie keeps
          // disabled: no timer will ever wake the hart, and nothing else can in
          // a machine without interrupting devices.
          if (deadline === U64_MAX || asU64(fn.getTime(this.hart)) >= deadline) return { kind: "stuck", pc: this.pc };
          // Deterministic time: nothing happens while the hart sleeps, so jump
          // straight to the deadline.
          fn.setTime(this.hart, deadline);
          break;
        }
        case k.EXIT_HTIF:
          this.stats.count("htif");
          return { kind: "htif", value: this.rec(k.RUN_DATA_OFF) };
        case k.EXIT_SBI:
          this.stats.count("sbi");
          return { kind: "sbi" };
        case k.EXIT_HALT:
          this.stats.count("halt");
          return { kind: "halt", pc: this.rec(k.RUN_ADDR_OFF) };
        case k.EXIT_BUDGET:
          this.stats.count("time-slice");
          return { kind: "budget" };
        case k.EXIT_KICK:
          // REQ_EXIT: only a host posts it; alone in a thread, end the slice.
          this.stats.count("preempt");
          return { kind: "budget" };
        default:
          throw new Error(`internal error: unknown exit reason ${reason}`);
      }
      if (this.stopRequested) {
        this.stopRequested = false;
        return { kind: "stop" };
      }
      if (budget <= 0) {
        this.stats.count("time-slice");
        return { kind: "budget" };
      }
    }
  }

  /** MMIO exit: route to the device, or complete as "no device" so the guest
   *  takes an access fault (a bus error), never the hypervisor. */
  handleMmioExit(write: boolean): void {
    const { k } = this.core;
    const addr = this.rec(k.RUN_ADDR_OFF);
    const size = Number(this.rec(k.RUN_SIZE_OFF));
    const hit = this.bus.find(addr, size);
    if (!hit) {
      this.stats.countMmio("(none)", write);
      this.setRec(k.RUN_MMIO_DONE_OFF, k.MMIO_NO_DEVICE);
      return;
    }
    this.stats.countMmio(hit.device.name, write);
    if (write) {
      hit.device.write(hit.offset, size, this.rec(k.RUN_DATA_OFF));
    } else {
      this.setRec(k.RUN_DATA_OFF, BigInt.asUintN(64, hit.device.read(hit.offset, size)));
    }
    this.setRec(k.RUN_MMIO_DONE_OFF, k.MMIO_COMPLETED);
  }

  /** p2m fault inside the RAM window: back the frame (allocate on first touch). */
  private handleP2mFault(): void {
    const gpa = this.rec(this.core.k.RUN_ADDR_OFF);
    const write = this.rec(this.core.k.RUN_WRITE_OFF) === 1n;
    try {
      if (!this.p2m.resolveFault(gpa, write)) this.p2m.hostFrame(gpa); // outside RAM: hostFrame says so
    } catch (e) {
      if (e instanceof P2mFault) throw new GuestFault(e.message);
      throw e;
    }
    // The core caches nothing about unmapped frames; a store that broke a
    // page's sharing had every hart of the VM flush its TLB (p2m.ts shootDownTlbs).
  }
}
