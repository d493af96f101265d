// Guest code -> one WebAssembly function per hot entry point ("region").
//
// A region is the entry's basic block plus every block reachable from it by
// direct branches and fall-through inside the same 4 KiB guest page, so loops
// and if/else inside a page run without leaving generated code. Blocks are
// cases of a loop with a br_table dispatch; guest registers live in wasm
// locals for the whole region (loaded on entry, the written ones stored on
// every exit). Anything leaving the page, indirect jumps (JALR) and
// instructions the translator leaves to the interpreter (SYSTEM, illegal
// encodings, 32-bit instructions straddling the page end) end the region.
// Floating point: see translate-fp.ts.
//
// Calling convention (the core's dispatcher, src/core/execute.ts):
//   (param h i32) (param pcBase i64) (param limit i32) (param block i32) (result i32)
// h is the hart block, pcBase the virtual address of the page the region was
// entered at (so one translation serves every virtual alias of the physical
// page), limit the instructions it may retire, block the one to start at: every
// block of a region is an entry point (the host links each into the cache),
// so code translated as part of one region needs no translation of its own.
// It stores the next pc at h+PC_OFF and returns retired << 2 | flags
// (JIT_NEED_INTERP, JIT_STOPPED).
//
// Exactness: a block runs only if its whole length fits in what is left of
// `limit`, so instret, the timer and interrupt points match the interpreter
// instruction for instruction. Loads and stores check the software TLB inline;
// a miss calls the core's slow path, and when that cannot complete (page
// fault, MMIO exit, misaligned atomic...) the region returns with pc at the
// instruction and JIT_NEED_INTERP: the instruction changed nothing, and the
// interpreter re-executes it and takes the trap or exit precisely.
//
// Requests from other threads (src/core/requests.ts): every backward branch
// inside a region polls the hart's request word, and a pending request leaves
// the region at the branch target as a budget end does (see pollRequests).

import { Code, Op, I32, I64, type Func } from "./wasm-emitter.js";
import { translateFp, fmaFunc } from "./translate-fp.js";
import { translateZb } from "./translate-zb.js";
import {
  type CoreLayout, type Insn, type InsnWriter, type Kind, REGION_TYPE, F_LOAD, F_STORE, F_EXEC, F_MULH,
  L_H, L_PCBASE, L_LIMIT, xLocal, L_LEFT, L_ID, L_RES, L_ENT, L_FPOK, L_HOST, L_PCOUT, L_VA, L_CTXL, L_CTXS, LOCALS,
} from "./region-abi.js";

export { HELPERS, REGION_TYPE, type CoreLayout } from "./region-abi.js";

/** The module's own functions, first after the imports (see F_FMA). */
export const SUPPORT_FUNCS: readonly Func[] = [fmaFunc()];

/** Bounds on one region (generated code size and compile time). */
const MAX_BLOCK_INSNS = 128;
const MAX_REGION_INSNS = 1500;
const MAX_REGION_BLOCKS = 200;
const PAGE = 4096;

/** An exit through the shared $out tail is one i32 in L_ENT: the page offset
 *  execution continues at (0..4096), the instructions of the current block
 *  not retired, and the result flags. */
const OUT_PENDING_SHIFT = 13;
const OUT_FLAGS_SHIFT = 24;
const outCode = (off: number, pending: number, flags: number) => off | (pending << OUT_PENDING_SHIFT) | (flags << OUT_FLAGS_SHIFT);

interface Block {
  start: number;
  body: Insn[];
  /** Control transfer ending the block (branch, jal, jalr), if any. */
  term?: Insn;
  /** Where execution goes after the body when there is no `term`: continue
   *  at `next` ("fall") or hand the instruction at `next` to the interpreter. */
  end: "fall" | "stop" | "term";
  next: number;
}

// ---- decoding ------------------------------------------------------------------

const rdOf = (i: number) => (i >>> 7) & 31;
const rs1Of = (i: number) => (i >>> 15) & 31;
const rs2Of = (i: number) => (i >>> 20) & 31;
const f3Of = (i: number) => (i >>> 12) & 7;
const f7Of = (i: number) => i >>> 25;
const immI = (i: number) => (i | 0) >> 20;
const immS = (i: number) => (((i | 0) >> 25) << 5) | ((i >>> 7) & 31);
const immB = (i: number) => (((i | 0) >> 31) << 12) | (((i >>> 7) & 1) << 11) | (((i >>> 25) & 63) << 5) | (((i >>> 8) & 15) << 1);
const immU = (i: number) => (i & 0xfffff000) | 0;
const immJ = (i: number) => (((i | 0) >> 31) << 20) | (((i >>> 12) & 255) << 12) | (((i >>> 20) & 1) << 11) | (((i >>> 21) & 1023) << 1);

/** FENCE with W in its predecessor set (PW, bit 24) and R in its successor
 *  set (SR, bit 21), not FENCE.TSO (fm = 1000): the one order TSO lacks. */
export function fenceNeedsBarrier(i: number): boolean {
  return i >>> 28 !== 8 && (i & (1 << 24)) !== 0 && (i & (1 << 21)) !== 0;
}

function classify(i: number): Kind {
  const f3 = f3Of(i), f7 = f7Of(i);
  switch (i & 0x7f) {
    case 0x03: return f3 !== 7 ? "load" : "exec";
    case 0x23: return f3 <= 3 ? "store" : "exec";
    case 0x13:
      if (f3 === 1) return i >>> 26 === 0 ? "alu" : "exec";
      if (f3 === 5) return i >>> 26 === 0 || i >>> 26 === 0x10 ? "alu" : "exec";
      return "alu";
    case 0x1b:
      if (f3 === 0) return "alu";
      if (f3 === 1) return f7 === 0 ? "alu" : "exec";
      if (f3 === 5) return f7 === 0 || f7 === 0x20 ? "alu" : "exec";
      return "exec";
    case 0x33:
      if (f7 === 0 || f7 === 1) return "alu";
      if (f7 === 0x20 && (f3 === 0 || f3 === 5)) return "alu";
      return "exec";
    case 0x3b:
      if (f7 === 0 && (f3 === 0 || f3 === 1 || f3 === 5)) return "alu";
      if (f7 === 0x20 && (f3 === 0 || f3 === 5)) return "alu";
      if (f7 === 1 && (f3 === 0 || f3 >= 4)) return "alu";
      return "exec";
    case 0x37: case 0x17: return "alu";
    case 0x63: return f3 === 2 || f3 === 3 ? "stop" : "branch";
    case 0x6f: return "jal";
    case 0x67: return f3 === 0 ? "jalr" : "stop";
    // FENCE: only W before R needs a barrier on the host (see the core's
    // fenceNeedsBarrier, src/core/execute.ts: x86 is TSO; unprivileged spec
    // 2.7 and chapter 14 RVWMO); other FENCEs are free. FENCE.I has nothing
    // to do: every store to a page with translations invalidates them when it
    // happens (as QEMU TCG does), which is stronger than FENCE.I asks for.
    // FENCE.I stops: the interpreter runs it (it may drop fetch TLB entries, execute.ts).
    case 0x0f: return f3 > 0 ? "stop" : fenceNeedsBarrier(i) ? "fence" : "nop";
    case 0x2f: return "exec"; // A
    case 0x07: case 0x27: case 0x43: case 0x47: case 0x4b: case 0x4f: case 0x53: return "fp"; // F, D
    default: return "stop"; // SYSTEM, and encodings that are illegal
  }
}

/** Decode the region starting at `entry` in `page` (the guest page's bytes). */
function discover(page: Uint8Array, entry: number, expandC: (c: number) => number): Block[] {
  const blocks = new Map<number, Block>();
  const order: Block[] = [];
  const work = [entry];
  let total = 0;
  while (work.length > 0 && order.length < MAX_REGION_BLOCKS && total < MAX_REGION_INSNS) {
    const start = work.shift()!;
    if (blocks.has(start)) continue;
    const b: Block = { start, body: [], end: "fall", next: start };
    let off = start;
    for (;;) {
      if (off >= PAGE) { b.end = "fall"; b.next = off; break; }
      const lo = page[off] | (page[off + 1] << 8);
      let insn: number, len: number;
      if ((lo & 3) === 3) {
        if (off + 4 > PAGE) { b.end = "stop"; b.next = off; break; }
        insn = (lo | (page[off + 2] << 16) | (page[off + 3] << 24)) >>> 0;
        len = 4;
      } else {
        insn = expandC(lo) >>> 0;
        len = 2;
        if (insn === 0) { b.end = "stop"; b.next = off; break; }
      }
      const kind = classify(insn);
      const it: Insn = { off, len, insn, kind };
      if (kind === "branch" || kind === "jal" || kind === "jalr") { b.term = it; b.end = "term"; b.next = off + len; break; }
      if (kind === "stop") { b.end = "stop"; b.next = off; break; }
      b.body.push(it);
      off += len;
      if (b.body.length >= MAX_BLOCK_INSNS) { b.end = "fall"; b.next = off; break; }
    }
    if (start === entry && b.body.length === 0 && b.end === "stop") return [];
    blocks.set(start, b);
    order.push(b);
    total += b.body.length + 1;
    const succ: number[] = [];
    if (b.end === "fall") succ.push(b.next);
    if (b.term) {
      const t = b.term;
      if (t.kind === "branch") succ.push(t.off + immB(t.insn), b.next);
      if (t.kind === "jal") succ.push(t.off + immJ(t.insn));
    }
    for (const s of succ) if (s >= 0 && s < PAGE && !blocks.has(s)) work.push(s);
  }
  return order;
}

// ---- code generation --------------------------------------------------------------

const LOAD_OPS = [Op.i64_load8_s, Op.i64_load16_s, Op.i64_load32_s, Op.i64_load, Op.i64_load8_u, Op.i64_load16_u, Op.i64_load32_u];
const STORE_OPS = [Op.i64_store8, Op.i64_store16, Op.i64_store32, Op.i64_store];
const accessSize = (it: Insn) => 1 << (f3Of(it.insn) & 3);
const accessOffset = (it: Insn) => (it.kind === "load" ? immI(it.insn) : immS(it.insn));

export interface Region {
  func: Func;
  /** Page offsets of the blocks, in block id order; -1 for a block that
   *  only hands its first instruction to the interpreter (no use as an entry). */
  starts: number[];
  /** Id of the block the region was made for. */
  entryBlock: number;
  insns: number;
}

/**
 * Translate the region entered at page offset `entry`; null when the
 * instruction there is one the interpreter must run (nothing to translate).
 */
export function translateRegion(page: Uint8Array, entry: number, expandC: (c: number) => number, k: CoreLayout, exportName: string): Region | null {
  const blocks = discover(page, entry, expandC);
  if (blocks.length === 0) return null;
  // In address order a block's fall-through successor is usually the next
  // one, and flows into it without a dispatch (see goto).
  blocks.sort((a, b) => a.start - b.start);
  return new RegionWriter(blocks, k).write(exportName, blocks.findIndex((b) => b.start === entry));
}

class RegionWriter implements InsnWriter {
  readonly c = new Code();
  private readonly ids = new Map<number, number>();
  private readonly used = new Set<number>();
  private readonly written = new Set<number>();
  /** Index of the block being written, and if/block levels opened inside it. */
  private cur = 0;
  depth = 0;
  fpUsed = false;
  private blockLen = 0;
  /** The current block branches back to its own start: its code is in a wasm loop. */
  private selfLoop = false;

  constructor(private readonly blocks: Block[], readonly k: CoreLayout) {
    blocks.forEach((b, i) => this.ids.set(b.start, i));
  }

  write(exportName: string, entryId: number): Region {
    const { c, blocks } = this;
    const n = blocks.length;
    const body = new Code();
    // Generate the blocks first: that collects the registers used. Each
    // block's code is followed by the `end` of the next label out ($B(i+1),
    // or $L after the last block).
    for (let i = 0; i < n; i++) {
      this.cur = i;
      this.depth = 0;
      this.block(blocks[i]);
      c.end();
    }
    // Prologue: registers and TLB contexts into locals.
    for (const r of [...this.used].sort((a, b) => a - b)) {
      body.get(L_H).mem(Op.i64_load, r * 8, 3).set(xLocal(r));
    }
    body.get(L_H).mem(Op.i64_load, this.k.CTX_LOAD_OFF, 3).set(L_CTXL);
    body.get(L_H).mem(Op.i64_load, this.k.CTX_STORE_OFF, 3).set(L_CTXS);
    body.get(L_LIMIT).set(L_LEFT);
    if (this.fpUsed) this.fpGate(body);
    // block $exit; block $exitPc; block $out; loop $L; block $B(n-1) ... block $B0; br_table
    body.block().block().block().loop();
    for (let i = 0; i < n; i++) body.block();
    body.get(L_ID).byte(Op.br_table).u32(n);
    for (let i = 0; i < n; i++) body.u32(i);
    body.u32(0);
    body.end(); // end of $B0: block 0's code follows
    body.append(c);
    // $out: leave at the page offset coded in L_ENT (see outCode). Shared
    // tails keep every exit from the middle of the code a few bytes long.
    body.end();
    body.get(L_PCBASE).get(L_ENT).i32(0x1fff).op(Op.i32_and).op(Op.i64_extend_i32_u).op(Op.i64_add).set(L_PCOUT);
    body.get(L_LIMIT).get(L_LEFT).op(Op.i32_sub)
      .get(L_ENT).i32(OUT_PENDING_SHIFT).op(Op.i32_shr_u).i32(0x7ff).op(Op.i32_and).op(Op.i32_sub)
      .i32(2).op(Op.i32_shl).get(L_ENT).i32(OUT_FLAGS_SHIFT).op(Op.i32_shr_u).op(Op.i32_or).set(L_RES);
    body.br(1);
    // $exitPc: a normal exit to the pc in L_PCOUT, at a block boundary.
    body.end();
    body.get(L_LIMIT).get(L_LEFT).op(Op.i32_sub).i32(2).op(Op.i32_shl).set(L_RES);
    body.end(); // end of $exit
    // Epilogue: written registers back, pc, result.
    for (const r of [...this.written].sort((a, b) => a - b)) {
      body.get(L_H).get(xLocal(r)).mem(Op.i64_store, r * 8, 3);
    }
    body.get(L_H).get(L_PCOUT).mem(Op.i64_store, this.k.PC_OFF, 3);
    body.get(L_RES);
    const insns = blocks.reduce((s, b) => s + b.body.length + (b.term ? 1 : 0), 0);
    return { func: { type: REGION_TYPE, locals: LOCALS, code: body, exportName }, starts: blocks.map((b) => (b.body.length === 0 && b.end === "stop" ? -1 : b.start)), entryBlock: entryId, insns };
  }

  /** L_FPOK for translate-fp.ts: 0 when mstatus.FS is not Dirty, else
   *  1 | NX << 1 | (frm == 0) << 2 (see FP_* in translate-fp.ts). Nothing a
   *  region runs can clear NX, change frm or FS (CSR instructions and traps
   *  end it), so what holds at entry holds to the exit. */
  private fpGate(body: Code): void {
    const k = this.k;
    body.get(L_H).mem(Op.i64_load, k.MSTATUS_OFF, 3).i64(0x6000).op(Op.i64_and).i64(0x6000).op(Op.i64_eq).set(L_FPOK);
    body.get(L_H).mem(Op.i32_load, k.FFLAGS_OFF, 2).i32(1).op(Op.i32_and).i32(1).op(Op.i32_shl)
      .get(L_H).mem(Op.i64_load, k.FRM_OFF, 3).op(Op.i64_eqz).i32(2).op(Op.i32_shl).op(Op.i32_or)
      .get(L_FPOK).op(Op.i32_or).i32(0).get(L_FPOK).op(Op.select).set(L_FPOK);
  }

  // Labels seen from block i's code: $B(i+1) .. $B(n-1), $L, $out, $exitPc, $exit.
  private get toLoop(): number {
    return this.blocks.length - 1 - this.cur + this.depth;
  }
  private get toOut(): number {
    return this.blocks.length - this.cur + this.depth;
  }
  private get toExitPc(): number {
    return this.blocks.length - this.cur + 1 + this.depth;
  }

  private open(result?: number): void {
    this.c.if(result);
    this.depth++;
  }
  private close(): void {
    this.c.end();
    this.depth--;
  }

  // ---- registers
  getX(r: number): void {
    if (r === 0) this.c.i64(0n);
    else { this.used.add(r); this.c.get(xLocal(r)); }
  }
  /** Pops the value on the stack into x[r] (x0 discards it). */
  setX(r: number): void {
    if (r === 0) this.c.op(Op.drop);
    else { this.used.add(r); this.written.add(r); this.c.set(xLocal(r)); }
  }
  private pcAt(off: number): void {
    this.c.get(L_PCBASE).i64(off).op(Op.i64_add);
  }

  // ---- exits
  /** Leave the region at a block boundary for the pc `pc()` leaves on the stack. */
  private exitTo(pc: () => void): void {
    pc();
    this.c.set(L_PCOUT).br(this.toExitPc);
  }
  /** Leave through $out (see outCode). */
  private out(off: number, pending: number, flags: number): void {
    this.c.i32(outCode(off, pending, flags)).set(L_ENT).br(this.toOut);
  }
  /** Continue at page offset `off`: inside the region, or leave it. `last`:
   *  nothing of the block follows, so the next block's code can be reached
   *  by falling through. */
  private goto(off: number, last = false): void {
    const id = off >= 0 && off < PAGE ? this.ids.get(off) : undefined;
    if (id !== undefined && id <= this.cur) this.pollRequests(off);
    if (id !== undefined && this.selfLoop && id === this.cur) {
      this.c.br(this.depth - 1); // to the loop around this block
    } else if (id !== undefined && last && id === this.cur + 1 && this.depth === (this.selfLoop ? 1 : 0)) {
      // falls through into the next block's code
    } else if (id !== undefined) {
      this.c.i32(id).set(L_ID).br(this.toLoop);
    } else {
      this.exitTo(() => this.pcAt(off));
    }
  }
  /** Before a backward branch inside the region (blocks are in address
   *  order, so every loop here has one): when another thread posted a
   *  request (src/core/requests.ts), leave at the branch target with the
   *  block retired, as a budget end does, and let the core act on it. A
   *  guest spinning in one translated loop notices within one iteration;
   *  the atomic load is also one the compiler may not hoist out of it. */
  private pollRequests(off: number): void {
    this.c.get(L_H).atomicLoad32(this.k.REQ_OFF);
    this.open();
    this.out(off, 0, 0);
    this.close();
  }

  // ---- blocks
  private block(b: Block): void {
    const { c } = this;
    const len = b.body.length + (b.term ? 1 : 0);
    this.blockLen = len;
    this.selfLoop = b.term?.kind === "branch" && b.term.off + immB(b.term.insn) === b.start;
    if (this.selfLoop) {
      c.loop();
      this.depth++;
    }
    if (len > 0) {
      // Not enough left to run the whole block: the interpreter goes on.
      c.i32(outCode(b.start, 0, this.k.JIT_NEED_INTERP)).set(L_ENT);
      c.get(L_LEFT).i32(len).op(Op.i32_lt_u).op(Op.br_if).u32(this.toOut);
      c.get(L_LEFT).i32(len).op(Op.i32_sub).set(L_LEFT);
    }
    for (let i = 0; i < b.body.length;) {
      const n = this.accessRun(b.body, i);
      if (n >= 2) this.accessGroup(b.body, i, n);
      else this.insn(b.body[i], i);
      i += Math.max(n, 1);
    }
    if (b.term) this.terminator(b.term);
    else if (b.end === "fall") this.goto(b.next, true);
    else this.out(b.next, 0, this.k.JIT_NEED_INTERP);
    if (this.selfLoop) {
      c.end();
      this.depth--;
      this.selfLoop = false;
    }
  }

  private terminator(t: Insn): void {
    const { c } = this;
    const i = t.insn;
    switch (t.kind) {
      case "branch": {
        this.getX(rs1Of(i));
        this.getX(rs2Of(i));
        c.op([Op.i64_eq, Op.i64_ne, 0, 0, Op.i64_lt_s, Op.i64_ge_s, Op.i64_lt_u, Op.i64_ge_u][f3Of(i)]);
        this.open();
        this.goto(t.off + immB(i));
        this.close();
        this.goto(t.off + t.len, true);
        return;
      }
      case "jal":
        this.pcAt(t.off + t.len);
        this.setX(rdOf(i));
        this.goto(t.off + immJ(i), true);
        return;
      case "jalr":
        // Target first: rd may be rs1.
        this.getX(rs1Of(i));
        c.i64(immI(i)).op(Op.i64_add).i64(-2n).op(Op.i64_and).set(L_PCOUT);
        this.pcAt(t.off + t.len);
        this.setX(rdOf(i));
        c.br(this.toExitPc);
        return;
    }
  }

  private insn(it: Insn, index: number): void {
    switch (it.kind) {
      case "alu": this.alu(it); return;
      case "load": this.load(it, index); return;
      case "store": this.store(it, index); return;
      case "fp": translateFp(this, it, index); return;
      case "exec": if (!translateZb(this, it.insn)) this.execHelper(it, index); return;
      case "nop": return;
      case "fence": this.c.fence(); return;
    }
    throw new Error(`internal error: ${it.kind} inside a block`);
  }

  // ---- memory
  /** Inline TLB probe for `size` bytes at L_VA: leaves the hit condition; sets
   *  L_ENT to the entry's address minus the array offset. An access crossing
   *  the page end compares its last byte's page with the tag and misses. */
  private tlbProbe(arrayOff: number, size: number, ctxLocal: number): void {
    const { c } = this;
    // ((va >> 12) & (TLB_ENTRIES - 1)) * 16, from the low 32 bits of va.
    c.get(L_VA).op(Op.i32_wrap_i64).i32(8).op(Op.i32_shr_u).i32((this.k.TLB_ENTRIES - 1) << 4).op(Op.i32_and)
      .get(L_H).op(Op.i32_add).tee(L_ENT)
      .mem(Op.i64_load, arrayOff, 3);
    c.get(L_VA);
    if (size > 1) c.i64(size - 1).op(Op.i64_add);
    c.i64(-4096).op(Op.i64_and).get(ctxLocal).op(Op.i64_or).op(Op.i64_eq);
  }
  private hostAddr(arrayOff: number): void {
    this.c.get(L_VA).get(L_ENT).mem(Op.i64_load, arrayOff + 8, 3).op(Op.i64_add).op(Op.i32_wrap_i64);
  }

  private load(it: Insn, index: number): void {
    this.loadValue(it, index, f3Of(it.insn));
    this.setX(rdOf(it.insn));
  }
  loadValue(it: Insn, index: number, width: number): void {
    const { c, k } = this;
    this.getX(rs1Of(it.insn));
    c.i64(immI(it.insn)).op(Op.i64_add).set(L_VA);
    this.tlbProbe(k.TLB_LOAD_OFF, 1 << (width & 3), L_CTXL);
    this.open(I64);
    this.hostAddr(k.TLB_LOAD_OFF);
    c.mem(LOAD_OPS[width], 0, 0);
    c.else();
    c.get(L_VA);
    this.loadMiss(it, index, width);
    this.close();
  }
  /** The access at the address on the stack through the core's slow path. */
  private loadMiss(it: Insn, index: number, width: number): void {
    const { c, k } = this;
    c.i32(1 << (width & 3)).call(F_LOAD);
    // The helper's value stays on the stack below the branch condition.
    c.i32(this.bailCode(it, index)).set(L_ENT);
    c.get(L_H).mem(Op.i32_load, k.JIT_BAIL_OFF, 2).op(Op.br_if).u32(this.toOut);
    if (width === 0) c.op(Op.i64_extend8_s);
    else if (width === 1) c.op(Op.i64_extend16_s);
    else if (width === 2) c.op(Op.i64_extend32_s);
  }

  private store(it: Insn, index: number): void {
    this.storeValue(it, index, () => this.getX(rs2Of(it.insn)));
  }
  storeValue(it: Insn, index: number, value: () => void): void {
    const { c, k } = this;
    const i = it.insn;
    this.getX(rs1Of(i));
    c.i64(immS(i)).op(Op.i64_add).set(L_VA);
    this.tlbProbe(k.TLB_STORE_OFF, accessSize(it), L_CTXS);
    this.open();
    this.hostAddr(k.TLB_STORE_OFF);
    value();
    c.mem(STORE_OPS[f3Of(i)], 0, 0);
    c.else();
    c.get(L_VA);
    value();
    c.i32(accessSize(it));
    this.helperCall(F_STORE, it, index);
    this.close();
  }

  /** How many accesses from body[i] on form a group: all loads or all
   *  stores, consecutive, off one base register that none of them but the
   *  last changes, within 2 KiB of each other (function prologues and
   *  epilogues saving and restoring registers on the stack, struct fields). */
  private accessRun(body: Insn[], i: number): number {
    const first = body[i];
    if (first.kind !== "load" && first.kind !== "store") return 0;
    const base = rs1Of(first.insn);
    let lo = Infinity, hi = -Infinity, n = 0;
    for (let j = i; j < body.length; j++) {
      const it = body[j];
      if (it.kind !== first.kind || rs1Of(it.insn) !== base) break;
      const off = accessOffset(it);
      if (Math.max(hi, off + accessSize(it)) - Math.min(lo, off) > 2048) break;
      lo = Math.min(lo, off);
      hi = Math.max(hi, off + accessSize(it));
      n++;
      if (it.kind === "load" && rdOf(it.insn) === base) break;
    }
    return n;
  }

  /** One TLB probe for the span of the group's accesses: on a hit each is a
   *  plain wasm access at a constant offset from one host address; on a miss
   *  (a page boundary inside the span, or a TLB miss) each goes through the
   *  core's slow path, exactly as it would alone. */
  private accessGroup(body: Insn[], first: number, n: number): void {
    const { c, k } = this;
    const group = body.slice(first, first + n);
    const isLoad = group[0].kind === "load";
    const base = rs1Of(group[0].insn);
    const lo = Math.min(...group.map(accessOffset));
    const hi = Math.max(...group.map((it) => accessOffset(it) + accessSize(it)));
    const tlb = isLoad ? k.TLB_LOAD_OFF : k.TLB_STORE_OFF;
    this.getX(base);
    c.i64(lo).op(Op.i64_add).set(L_VA);
    this.tlbProbe(tlb, hi - lo, isLoad ? L_CTXL : L_CTXS);
    this.open();
    this.hostAddr(tlb);
    c.set(L_HOST);
    for (const it of group) {
      const i = it.insn, delta = accessOffset(it) - lo;
      c.get(L_HOST);
      if (isLoad) {
        c.mem(LOAD_OPS[f3Of(i)], delta, 0);
        this.setX(rdOf(i));
      } else {
        this.getX(rs2Of(i));
        c.mem(STORE_OPS[f3Of(i)], delta, 0);
      }
    }
    c.else();
    group.forEach((it, j) => {
      const i = it.insn;
      // The base register is unchanged until the group's last access.
      c.get(L_VA).i64(accessOffset(it) - lo).op(Op.i64_add);
      if (isLoad) {
        this.loadMiss(it, first + j, f3Of(i));
        this.setX(rdOf(i));
      } else {
        this.getX(rs2Of(i));
        c.i32(accessSize(it));
        this.helperCall(F_STORE, it, first + j);
      }
    });
    this.close();
  }

  private bailCode(it: Insn, index: number): number {
    return outCode(it.off, this.blockLen - index, this.k.JIT_NEED_INTERP);
  }

  /** Call helper `f` (its own arguments are on the stack) with this
   *  instruction's two exit codes: it returns 0 to go on, the first when the
   *  instruction did nothing and the interpreter must run it, the second when
   *  it completed but overwrote translated code (possibly this region's), so
   *  the region stops right after it. */
  private helperCall(f: number, it: Insn, index: number, afterCall?: () => void): void {
    const pending = this.blockLen - index;
    this.c.i32(outCode(it.off, pending, this.k.JIT_NEED_INTERP)).i32(outCode(it.off + it.len, pending - 1, this.k.JIT_STOPPED));
    this.c.call(f);
    if (afterCall) {
      this.c.set(L_ENT);
      afterCall();
      this.c.get(L_ENT);
    } else {
      this.c.tee(L_ENT);
    }
    this.c.op(Op.br_if).u32(this.toOut);
  }

  /** The core's execute() runs it on the registers in the hart block: the x
   *  registers it reads go there first, the one it writes comes back (by
   *  default those the rs1, rs2 and rd fields name). */
  execHelper(it: Insn, index: number, xReads?: number[], xWrite?: number): void {
    const { c } = this;
    const i = it.insn;
    const rd = xWrite ?? rdOf(i);
    // x[rd] goes too: it is reloaded below also when the helper bailed
    // without writing it.
    const regs = [...new Set([...(xReads ?? [rs1Of(i), rs2Of(i)]), rd])].filter((r) => r !== 0);
    for (const r of regs) { this.used.add(r); c.get(L_H).get(xLocal(r)).mem(Op.i64_store, r * 8, 3); }
    c.i32(i | 0);
    this.pcAt(it.off);
    c.i32(it.len);
    // x[rd] back before the exit check: a stop exit comes after the
    // instruction completed (and stores the local back to the hart block).
    this.helperCall(F_EXEC, it, index, () => {
      if (rd !== 0) { this.written.add(rd); c.get(L_H).mem(Op.i64_load, rd * 8, 3).set(xLocal(rd)); }
    });
  }

  // ---- integer
  private alu(it: Insn): void {
    const { c } = this;
    const i = it.insn;
    const rd = rdOf(i), rs1 = rs1Of(i), rs2 = rs2Of(i), f3 = f3Of(i), f7 = f7Of(i);
    switch (i & 0x7f) {
      case 0x37: c.i64(immU(i)); break; // LUI
      case 0x17: this.pcAt(it.off); c.i64(immU(i)).op(Op.i64_add); break; // AUIPC
      case 0x13: {
        const imm = immI(i);
        this.getX(rs1);
        switch (f3) {
          case 0: c.i64(imm).op(Op.i64_add); break;
          case 2: c.i64(imm).op(Op.i64_lt_s).op(Op.i64_extend_i32_u); break;
          case 3: c.i64(imm).op(Op.i64_lt_u).op(Op.i64_extend_i32_u); break;
          case 4: c.i64(imm).op(Op.i64_xor); break;
          case 6: c.i64(imm).op(Op.i64_or); break;
          case 7: c.i64(imm).op(Op.i64_and); break;
          case 1: c.i64((i >>> 20) & 63).op(Op.i64_shl); break;
          case 5: c.i64((i >>> 20) & 63).op(i >>> 26 === 0x10 ? Op.i64_shr_s : Op.i64_shr_u); break;
        }
        break;
      }
      case 0x1b: {
        this.getX(rs1);
        const sh = (i >>> 20) & 31;
        if (f3 === 0) c.i64(immI(i)).op(Op.i64_add).op(Op.i64_extend32_s);
        else if (f3 === 1) c.i64(sh).op(Op.i64_shl).op(Op.i64_extend32_s);
        else if (f7 === 0) c.op(Op.i32_wrap_i64).i32(Number(sh)).op(Op.i32_shr_u).op(Op.i64_extend_i32_s);
        else c.op(Op.i32_wrap_i64).i32(Number(sh)).op(Op.i32_shr_s).op(Op.i64_extend_i32_s);
        break;
      }
      case 0x33:
        if (f7 === 1) { this.mulDiv(f3, rs1, rs2); break; }
        this.getX(rs1);
        this.getX(rs2);
        if (f7 === 0x20) { c.op(f3 === 0 ? Op.i64_sub : Op.i64_shr_s); break; }
        switch (f3) {
          case 0: c.op(Op.i64_add); break;
          case 1: c.op(Op.i64_shl); break;
          case 2: c.op(Op.i64_lt_s).op(Op.i64_extend_i32_u); break;
          case 3: c.op(Op.i64_lt_u).op(Op.i64_extend_i32_u); break;
          case 4: c.op(Op.i64_xor); break;
          case 5: c.op(Op.i64_shr_u); break;
          case 6: c.op(Op.i64_or); break;
          case 7: c.op(Op.i64_and); break;
        }
        break;
      case 0x3b:
        if (f7 === 1) { this.mulDivW(f3, rs1, rs2); break; }
        this.getX(rs1);
        if (f3 === 0) {
          this.getX(rs2);
          c.op(f7 === 0x20 ? Op.i64_sub : Op.i64_add).op(Op.i64_extend32_s);
        } else {
          c.op(Op.i32_wrap_i64);
          this.getX(rs2);
          c.op(Op.i32_wrap_i64).op(f3 === 1 ? Op.i32_shl : f7 === 0x20 ? Op.i32_shr_s : Op.i32_shr_u).op(Op.i64_extend_i32_s);
        }
        break;
      default:
        throw new Error(`internal error: opcode ${i & 0x7f} is not ALU`);
    }
    this.setX(rd);
  }

  /** M extension on 64 bits; division by zero and overflow as table 7.1 says
   *  (wasm's division would trap on both). */
  private mulDiv(f3: number, rs1: number, rs2: number): void {
    const { c } = this;
    const a = () => this.getX(rs1), b = () => this.getX(rs2);
    switch (f3) {
      case 0: a(); b(); c.op(Op.i64_mul); return;
      case 1: case 2: case 3: a(); b(); c.i32(f3).call(F_MULH); return;
      case 4: // DIV
        b(); c.op(Op.i64_eqz);
        this.open(I64); c.i64(-1n); c.else();
        a(); c.i64(-(1n << 63n)).op(Op.i64_eq); b(); c.i64(-1n).op(Op.i64_eq).op(Op.i32_and);
        this.open(I64); a(); c.else(); a(); b(); c.op(Op.i64_div_s); this.close();
        this.close();
        return;
      case 5: // DIVU
        b(); c.op(Op.i64_eqz);
        this.open(I64); c.i64(-1n); c.else(); a(); b(); c.op(Op.i64_div_u); this.close();
        return;
      case 6: // REM (wasm's rem_s gives 0 for MIN % -1, as RISC-V does)
        b(); c.op(Op.i64_eqz);
        this.open(I64); a(); c.else(); a(); b(); c.op(Op.i64_rem_s); this.close();
        return;
      case 7: // REMU
        b(); c.op(Op.i64_eqz);
        this.open(I64); a(); c.else(); a(); b(); c.op(Op.i64_rem_u); this.close();
        return;
    }
  }

  /** M extension W forms: 32-bit operands, results sign-extended. */
  private mulDivW(f3: number, rs1: number, rs2: number): void {
    const { c } = this;
    const a = () => { this.getX(rs1); c.op(Op.i32_wrap_i64); };
    const b = () => { this.getX(rs2); c.op(Op.i32_wrap_i64); };
    switch (f3) {
      case 0: this.getX(rs1); this.getX(rs2); c.op(Op.i64_mul).op(Op.i64_extend32_s); return;
      case 4: // DIVW
        b(); c.op(Op.i32_eqz);
        this.open(I32); c.i32(-1); c.else();
        a(); c.i32(-0x80000000).op(Op.i32_eq); b(); c.i32(-1).op(Op.i32_eq).op(Op.i32_and);
        this.open(I32); c.i32(-0x80000000); c.else(); a(); b(); c.op(Op.i32_div_s); this.close();
        this.close();
        break;
      case 5: // DIVUW
        b(); c.op(Op.i32_eqz);
        this.open(I32); c.i32(-1); c.else(); a(); b(); c.op(Op.i32_div_u); this.close();
        break;
      case 6: // REMW
        b(); c.op(Op.i32_eqz);
        this.open(I32); a(); c.else(); a(); b(); c.op(Op.i32_rem_s); this.close();
        break;
      case 7: // REMUW
        b(); c.op(Op.i32_eqz);
        this.open(I32); a(); c.else(); a(); b(); c.op(Op.i32_rem_u); this.close();
        break;
    }
    c.op(Op.i64_extend_i32_s);
  }
}
