// The interpreter: fetch, decode, execute until a VM exit.
//
// Per instruction: fetch through the TLB, dispatch on the major opcode, then
// look at `status` once. Traps are taken here (trap.ts). Interrupts are checked
// when something that can make one takeable changed (irqCheckNeeded: CSR
// writes, xRET, a timer compare reached, run() entry).

import {
  H, rd, wr, status, trapCause, trapTval, clearStatus, STATUS_OK, STATUS_TRAP, STATUS_EXIT,
  PC_OFF, TIME_OFF, TICK_INSNS_OFF, TICK_LEFT_OFF, RUN_REASON_OFF, RUN_INSNS_OFF, RUN_MMIO_DONE_OFF,
  RUN_ADDR_OFF, WAITING_OFF, CAUSE_ILLEGAL_INSTRUCTION, illegal, JIT_CACHE_OFF, REQ_OFF,
} from "./hart";
import { fetch, fetchFromShared, htifHit, clearHtifHit, storeKilledCode, clearStoreKilledCode } from "./memory";
import { jitFind, jitChainTarget, flushCompileQueue, countEntered, countBail } from "./jit-cache";
import { updateTlbContext, tlbFlushFetch } from "./tlb";
import { enterTrap, pendingInterrupt, irqCheckNeeded, clearIrqCheck, requestIrqCheck, nextTimerDeadline, INTERRUPT_BIT } from "./trap";
import { beginRunCounting, countRetired, retiredThisRunAdd, foldCounters, retiredThisRun } from "./counters";
import { EXIT_BUDGET, EXIT_HALT, EXIT_KICK, EXIT_P2M_FAULT } from "./exit";
import { requestsPending, takeRequests, kick, postRequestTo, REQ_EXIT } from "./requests";
import { execLoad, execStore, execOpImm, execOpImm32, execOp, execOp32, execBranch, jalTarget, immI } from "./isa/rv64i";
import { execAtomic } from "./isa/a";
import { expandCompressed } from "./isa/c";
import { execSystem, exitAfterRetire, clearExitAfterRetire } from "./isa/system";
import { execFp } from "./fp/exec";
import { getX, setX } from "./hart";

/** Execute one (expanded, 32-bit) instruction at `pc` of length `len`; returns
 *  the next pc. */
@inline function execute(insn: u32, pc: u64, len: u64): u64 {
  switch (insn & 0x7f) {
    case 0x03: execLoad(insn); break;
    case 0x13: execOpImm(insn); break;
    case 0x17: setX((insn >> 7) & 31, pc + <u64>(<i64>(<i32>(insn & 0xfffff000)))); break; // AUIPC
    case 0x1b: execOpImm32(insn); break;
    case 0x23: execStore(insn); break;
    case 0x2f: execAtomic(insn); break;
    case 0x33: execOp(insn); break;
    case 0x37: setX((insn >> 7) & 31, <u64>(<i64>(<i32>(insn & 0xfffff000)))); break; // LUI
    case 0x3b: execOp32(insn); break;
    case 0x63: return execBranch(insn, pc, len);
    case 0x67: { // JALR: target computed before the link write (rd may equal rs1)
      if (((insn >> 12) & 7) != 0) { illegal(insn); return pc; }
      const target = (getX((insn >> 15) & 31) + immI(insn)) & ~(<u64>1);
      setX((insn >> 7) & 31, pc + len);
      return target;
    }
    case 0x6f: { // JAL
      setX((insn >> 7) & 31, pc + len);
      return jalTarget(insn, pc);
    }
    case 0x0f: // MISC-MEM: FENCE (incl. PAUSE, FENCE.TSO), FENCE.I. There is
      // no instruction cache to flush in the interpreter; FENCE.I drops fetch
      // translations that may still name a frame whose sharing a store broke.
      if (((insn >> 12) & 7) > 1) illegal(insn);
      else if (((insn >> 12) & 7) == 1 && fetchFromShared) tlbFlushFetch();
      else if (fenceNeedsBarrier(insn)) fullBarrier();
      break;
    case 0x73: return execSystem(insn, pc);
    case 0x07: case 0x27: case 0x43: case 0x47: case 0x4b: case 0x4f: case 0x53:
      execFp(insn);
      break;
    default:
      illegal(insn);
  }
  return pc + len;
}

/**
 * Does this FENCE order something the host does not already order? Harts on
 * other threads see our plain loads and stores in the host's order: wasm's
 * plain accesses to shared memory compile to plain moves, and x86 is TSO,
 * which keeps every order RVWMO's FENCE can ask for (unprivileged spec
 * 20191213, 2.7 "Memory Ordering Instructions" and chapter 14 RVWMO) except
 * an earlier store before a later load. Only a FENCE whose predecessor set
 * has W (PW, bit 24) and successor set has R (SR, bit 21) asks for that, and
 * only then do we pay for atomic.fence (an MFENCE). FENCE.TSO (fm = 1000)
 * orders everything but W before R, so it needs nothing either. (PI, PO, SI,
 * SO: device accesses are VM exits, complete before the next instruction.)
 */
export function fenceNeedsBarrier(insn: u32): bool {
  if (((insn >> 12) & 7) != 0 || (insn >> 28) == 8) return false;
  return (insn & (1 << 24)) != 0 && (insn & (1 << 21)) != 0;
}

/** A store-load barrier. Not atomic.fence(): AssemblyScript 0.28 emits it in
 *  a form binaryen 131 rejects ("Atomic fence cannot be unordered"). A
 *  sequentially consistent read-modify-write that changes nothing (an OR of
 *  0 into the hart's own request word) is one too: V8 compiles it to a
 *  LOCK-prefixed instruction on x64, a full barrier as MFENCE is. Translated
 *  code, whose bytes we write ourselves, uses atomic.fence. */
@inline function fullBarrier(): void {
  atomic.or<u32>(H + <usize>REQ_OFF, 0);
}

// Expansions of the 65536 possible 16-bit instructions, filled on first use:
// a table lookup instead of re-decoding each time (compressed instructions are
// about half of typical RV64GC code). It lives right after the core's static
// data, inside the area the hypervisor reserves for the core (coreDataEnd).
// 0 = not expanded yet, 1 = illegal (no 32-bit encoding has low bits 01).
export const C_DECODE_TABLE: usize = (__heap_base + 15) & ~(<usize>15);
export const C_DECODE_TABLE_END: usize = C_DECODE_TABLE + (65536 << 2);
const C_ILLEGAL: u32 = 1;
const PAGE_MASK: u64 = ~(<u64>0xfff);

@inline function expandCached(c: u32): u32 {
  const p = C_DECODE_TABLE + ((<usize>c) << 2);
  let e = load<u32>(p);
  if (e == 0) {
    e = expandCompressed(c);
    if (e == 0) e = C_ILLEGAL;
    store<u32>(p, e);
  }
  return e;
}

/** Execute the instruction `fetch` returned for `pc` (nothing when the fetch
 *  faulted); returns the next pc. */
@inline function executeFetched(insn: u32, pc: u64): u64 {
  if (status != STATUS_OK) return 0;
  if ((insn & 3) == 3) return execute(insn, pc, 4);
  const expanded = expandCached(insn & 0xffff);
  let next: u64 = 0;
  if (expanded == C_ILLEGAL) illegal(insn & 0xffff);
  else next = execute(expanded, pc, 2);
  // Faults report the 16-bit instruction as it is in memory.
  if (status == STATUS_TRAP && trapCause == CAUSE_ILLEGAL_INSTRUCTION) illegal(insn & 0xffff);
  return next;
}

// Consecutive traps without a retired instruction: a handler that itself
// faults forever (e.g. mtvec pointing at unmapped memory) ends the run.
const TRAP_STORM_LIMIT: u32 = 1000000;

// A translated function is called as f(hart, pcBase, limit). Result:
// instructions retired << 2 | flags. Its pc is in the hart block (PC_OFF).
/** The instruction at pc must run in the interpreter (a fault, an MMIO access,
 *  an instruction translated code leaves to it, or too little budget left for
 *  the next block). */
export const JIT_NEED_INTERP: i32 = 1;
/** A store overwrote translated code (or reached HTIF tohost): stopped after it. */
export const JIT_STOPPED: i32 = 2;

/**
 * Run the region `fn` entered at `pc`, then, as long as one leaves normally
 * (a jump out of its page, a call, a return: within a page the region itself
 * already links its blocks) with budget left and the next pc has a current
 * translation, go straight on to that one: no counting, timer or interrupt
 * bookkeeping in between. This is QEMU's lookup_and_goto_ptr, with a return
 * to this loop where QEMU jumps (a wasm tail call would need the generated
 * modules to import the function table, and V8 in Node 20 then keeps every
 * such module alive for as long as the table lives). `fn` is what jitFind
 * and jitChainTarget return: table slot | block to start at << 16. Returns
 * what a region returns, summed over the chain: retired << 2 | flags of the
 * last one.
 */
function runRegions(fn: u32, pc: u64, limit: u32): i32 {
  let done: u32 = 0;
  while (true) {
    const r = call_indirect<i32>(fn & 0xffff, <u32>H, pc & PAGE_MASK, limit - done, fn >>> 16);
    const n = <u32>(r >>> 2);
    done += n;
    if ((r & 3) != 0 || n == 0 || done >= limit) return <i32>(done << 2) | (r & 3);
    // A request (requests.ts) waits for the dispatcher; translated code left
    // it at a region boundary (which its own backward branches also poll).
    if (requestsPending()) return <i32>(done << 2);
    pc = rd(PC_OFF);
    fn = jitChainTarget(pc);
    if (fn == 0) return <i32>(done << 2);
  }
}

/** At a tick boundary, every TICK_INSNS instructions: act on the requests
 *  of other threads (requests.ts); true when run() must end with EXIT_KICK
 *  now. An instruction that ends run() itself (an SBI call, WFI, HTIF) goes
 *  first: its exit is reported and the kick waits in the word for the next
 *  run() entry. */
@inline function kickedAtTick(): bool {
  if (!requestsPending() || !takeRequests()) return false;
  if (exitAfterRetire || htifHit) {
    postRequestTo(H, REQ_EXIT);
    return false;
  }
  return true;
}

/** Instructions that can retire before time reaches `deadline` (after which an
 *  interrupt may become pending), capped at `cap`. */
@inline function insnsBeforeDeadline(deadline: u64, tickLeft: u64, tickInsns: u64, cap: u32): u32 {
  const t = rd(TIME_OFF);
  if (deadline == 0xffffffffffffffff || deadline <= t) return cap;
  const ticks = deadline - t - 1;
  if (ticks >= <u64>cap) return cap; // at least one instruction per tick
  const n = tickLeft + ticks * tickInsns;
  return n >= <u64>cap ? cap : <u32>n;
}

export function runHart(budget: u32): i32 {
  clearStatus();
  clearExitAfterRetire();
  clearHtifHit();
  clearStoreKilledCode();
  beginRunCounting();
  updateTlbContext();
  wr(WAITING_OFF, 0);
  const jitOn = rd(JIT_CACHE_OFF) != 0;
  // Requests posted while the hart was not running, before the first instruction.
  let reason: i32 = EXIT_KICK;
  if (!(requestsPending() && takeRequests())) reason = jitOn ? runWithTranslation(budget) : runInterpreted(budget);
  foldCounters();
  wr(RUN_INSNS_OFF, retiredThisRun);
  if (reason == EXIT_BUDGET) store<i64>(H, <i64>EXIT_BUDGET, RUN_REASON_OFF);
  else if (reason == EXIT_KICK) kick();
  // A slice end is a good moment to compile a part-filled batch (other exits
  // come too often: batches would be small and each module has a fixed cost).
  if (jitOn && reason == EXIT_BUDGET) flushCompileQueue();
  return reason;
}

/** Did the instruction just executed stop for a p2m-fault exit (not retired)? */
@inline function stoppedForP2mFault(): bool {
  return status == STATUS_EXIT && <i32>load<i64>(H, RUN_REASON_OFF) == EXIT_P2M_FAULT;
}

/** The interpreter alone (JIT off): nothing per instruction beyond executing it. */
function runInterpreted(budget: u32): i32 {
  let pc = rd(PC_OFF);
  let left = budget;
  let tickLeft = rd(TICK_LEFT_OFF);
  const tickInsns = rd(TICK_INSNS_OFF);
  let deadline = nextTimerDeadline();
  let reason: i32 = EXIT_BUDGET;
  let trapsInARow: u32 = 0;
  // A completed MMIO access must be consumed by re-executing its instruction
  // before anything else runs (an interrupt handler must not see it).
  let mmioCompletion = rd(RUN_MMIO_DONE_OFF) != 0;
  if (mmioCompletion) clearIrqCheck(); else requestIrqCheck();

  while (true) {
    if (irqCheckNeeded) {
      clearIrqCheck();
      // A compare already reached is now reflected in mip; whether it can be
      // taken changes only through CSR writes or xRET, which request a check.
      deadline = nextTimerDeadline();
      if (deadline <= rd(TIME_OFF)) deadline = 0xffffffffffffffff;
      const irq = pendingInterrupt();
      if (irq >= 0) pc = enterTrap(INTERRUPT_BIT | <u64>irq, 0, pc);
    }
    if (left == 0) break;

    const insn = fetch(pc);
    const next = executeFetched(insn, pc);
    if (mmioCompletion) {
      mmioCompletion = false;
      // Not consumed because the instruction stopped for a p2m fault before
      // its access: it restarts after the fault and must still find it.
      if (!stoppedForP2mFault()) wr(RUN_MMIO_DONE_OFF, 0);
      requestIrqCheck();
    }

    if (status != STATUS_OK) {
      if (status == STATUS_TRAP) {
        clearStatus();
        pc = enterTrap(trapCause, trapTval, pc);
        if (++trapsInARow >= TRAP_STORM_LIMIT) {
          store<i64>(H, <i64>EXIT_HALT, RUN_REASON_OFF);
          wr(RUN_ADDR_OFF, pc);
          reason = EXIT_HALT;
          break;
        }
        continue;
      }
      // STATUS_EXIT: the instruction did not complete; it restarts on resume.
      reason = <i32>load<i64>(H, RUN_REASON_OFF);
      break;
    }
    trapsInARow = 0;
    pc = next;
    countRetired();
    left--;
    if (--tickLeft == 0) {
      tickLeft = tickInsns;
      const t = rd(TIME_OFF) + 1;
      wr(TIME_OFF, t);
      if (t >= deadline) requestIrqCheck();
      if (kickedAtTick()) {
        reason = EXIT_KICK;
        break;
      }
    }
    if (exitAfterRetire || htifHit) {
      reason = <i32>load<i64>(H, RUN_REASON_OFF);
      break;
    }
  }
  wr(PC_OFF, pc);
  wr(TICK_LEFT_OFF, tickLeft);
  return reason;
}

/** The interpreter with translated code: at block starts, enter translated
 *  code when there is some (counting entries towards translation otherwise).
 *  Between block starts the loop does what runInterpreted's does and one
 *  compare more: its per-instruction cost is most of what the code that is
 *  not (yet) translated costs. */
function runWithTranslation(budget: u32): i32 {
  let pc = rd(PC_OFF);
  let left = budget;
  let tickLeft = rd(TICK_LEFT_OFF);
  const tickInsns = rd(TICK_INSNS_OFF);
  let deadline = nextTimerDeadline();
  let reason: i32 = EXIT_BUDGET;
  let trapsInARow: u32 = 0;
  // A completed MMIO access must be consumed by re-executing its instruction
  // before anything else runs (an interrupt handler must not see it).
  let mmioCompletion = rd(RUN_MMIO_DONE_OFF) != 0;
  if (mmioCompletion) clearIrqCheck(); else requestIrqCheck();
  // Look for translated code only where a block can start: after a taken
  // jump or branch, a trap or translated code, not in straight-line code the
  // interpreter is already running. A step of pc larger than `seqStep` ends
  // a block. The instruction translated code handed back (or the MMIO access
  // to complete) must run here first, or the lookup would find the same code
  // again: for that one instruction `seqStep` is 0, so that any step ends it.
  // (A taken branch to pc+2 or pc+4 passes for straight-line code: that only
  // means one lookup fewer.)
  let lookup = !mmioCompletion;
  let seqStep: u64 = mmioCompletion ? 0 : 4;

  while (true) {
    if (irqCheckNeeded) {
      clearIrqCheck();
      // A compare already reached is now reflected in mip; whether it can be
      // taken changes only through CSR writes or xRET, which request a check.
      deadline = nextTimerDeadline();
      if (deadline <= rd(TIME_OFF)) deadline = 0xffffffffffffffff;
      const irq = pendingInterrupt();
      if (irq >= 0) { pc = enterTrap(INTERRUPT_BIT | <u64>irq, 0, pc); lookup = true; seqStep = 4; }
    }
    if (left == 0) break;

    if (lookup) {
      lookup = false;
      const fn = jitFind(pc);
      if (fn != 0) {
        // Translated code runs whole blocks and must not cross the point where
        // the timer makes an interrupt pending: it is then taken at exactly the
        // instruction the interpreter would take it at (deterministic mode).
        const limit = insnsBeforeDeadline(deadline, tickLeft, tickInsns, left);
        const r = runRegions(fn, pc, limit);
        const n = <u32>(r >>> 2);
        countEntered(n);
        pc = rd(PC_OFF);
        if (n != 0) {
          trapsInARow = 0;
          retiredThisRunAdd(n);
          left -= n;
          if (<u64>n < tickLeft) {
            tickLeft -= <u64>n;
          } else {
            const past = <u64>n - tickLeft;
            const t = rd(TIME_OFF) + 1 + past / tickInsns;
            tickLeft = tickInsns - past % tickInsns;
            wr(TIME_OFF, t);
            if (t >= deadline) requestIrqCheck();
          }
        }
        if ((r & JIT_NEED_INTERP) != 0) { countBail(); seqStep = 0; } else lookup = true;
        if (htifHit) {
          reason = <i32>load<i64>(H, RUN_REASON_OFF);
          break;
        }
        if (requestsPending() && takeRequests()) {
          reason = EXIT_KICK;
          break;
        }
        continue;
      }
    }

    const insn = fetch(pc);
    const next = executeFetched(insn, pc);
    if (mmioCompletion) {
      mmioCompletion = false;
      // Not consumed because the instruction stopped for a p2m fault before
      // its access: it restarts after the fault and must still find it.
      if (!stoppedForP2mFault()) wr(RUN_MMIO_DONE_OFF, 0);
      requestIrqCheck();
    }

    if (status != STATUS_OK) {
      if (status == STATUS_TRAP) {
        clearStatus();
        pc = enterTrap(trapCause, trapTval, pc);
        lookup = true;
        seqStep = 4;
        if (++trapsInARow >= TRAP_STORM_LIMIT) {
          store<i64>(H, <i64>EXIT_HALT, RUN_REASON_OFF);
          wr(RUN_ADDR_OFF, pc);
          reason = EXIT_HALT;
          break;
        }
        continue;
      }
      // STATUS_EXIT: the instruction did not complete; it restarts on resume.
      reason = <i32>load<i64>(H, RUN_REASON_OFF);
      break;
    }
    trapsInARow = 0;
    if (next - pc > seqStep) {
      lookup = true;
      seqStep = 4;
    }
    pc = next;
    countRetired();
    left--;
    if (--tickLeft == 0) {
      tickLeft = tickInsns;
      const t = rd(TIME_OFF) + 1;
      wr(TIME_OFF, t);
      if (t >= deadline) requestIrqCheck();
      if (kickedAtTick()) {
        reason = EXIT_KICK;
        break;
      }
    }
    if (exitAfterRetire || htifHit) {
      reason = <i32>load<i64>(H, RUN_REASON_OFF);
      break;
    }
  }
  wr(PC_OFF, pc);
  wr(TICK_LEFT_OFF, tickLeft);
  return reason;
}

// ---- helpers for translated code (src/jit/): they run on the hart run() is
// executing, and report through JIT_BAIL_OFF / their result instead of status.

/** Execute one non-control-flow instruction (FP, atomics, rare integer ops)
 *  with the registers in the hart block. 0: done; 1: not done, no effect (the
 *  interpreter must run it); 2: done, and it overwrote translated code. */
export function jitExecOne(insn: u32, pc: u64, len: u32): i32 {
  clearStoreKilledCode();
  execute(insn, pc, <u64>len);
  if (status != STATUS_OK) {
    clearStatus();
    return 1;
  }
  if (storeKilledCode) return 2;
  return 0;
}

