// What generated region code and the writers of its parts (translate.ts for
// the integer instructions and control flow, translate-fp.ts for floating
// point) agree on: the core's offsets, the imported helpers, the locals.

import { type Code, I32, I64, F64, type FuncType } from "./wasm-emitter.js";

/** Offsets and constants of the core the generated code depends on. */
export interface CoreLayout {
  PC_OFF: number;
  F_OFF: number;
  FFLAGS_OFF: number;
  FRM_OFF: number;
  MSTATUS_OFF: number;
  CTX_LOAD_OFF: number;
  CTX_STORE_OFF: number;
  JIT_BAIL_OFF: number;
  TLB_LOAD_OFF: number;
  TLB_STORE_OFF: number;
  TLB_ENTRIES: number;
  JIT_NEED_INTERP: number;
  JIT_STOPPED: number;
  /** The hart's request word (src/core/requests.ts), polled at backward branches. */
  REQ_OFF: number;
}

/** The core's helpers, imported by every generated module, in this order. */
export const HELPERS: { name: string; type: FuncType }[] = [
  { name: "jitLoad", type: { params: [I64, I32], results: [I64] } },
  { name: "jitStore", type: { params: [I64, I64, I32, I32, I32], results: [I32] } },
  { name: "jitExec", type: { params: [I32, I64, I32, I32, I32], results: [I32] } },
  { name: "jitMulh", type: { params: [I64, I64, I32], results: [I64] } },
];
export const F_LOAD = 0, F_STORE = 1, F_EXEC = 2, F_MULH = 3;

/** Functions every generated module defines itself, after the imports and
 *  before the regions, not exported: shared code too long to repeat inline
 *  (translate.ts's SUPPORT_FUNCS, in this order). */
export const F_FMA = HELPERS.length;

export const REGION_TYPE: FuncType = { params: [I32, I64, I32, I32], results: [I32] };

// Locals: parameters (the block to start at is L_ID, the dispatch variable),
// then x1..x31, then scratch.
export const L_H = 0, L_PCBASE = 1, L_LIMIT = 2, L_ID = 3;
export const xLocal = (r: number) => 3 + r; // x1 -> 4 ... x31 -> 34
export const L_LEFT = 35, L_RES = 36;
export const L_ENT = 37, L_FPOK = 38, L_HOST = 39;
export const L_PCOUT = 40;
export const L_VA = 41, L_CTXL = 42, L_CTXS = 43;
/** f64 scratch for translate-fp.ts: L_F0 .. L_F0 + F64_LOCALS - 1. */
export const L_F0 = 44, F64_LOCALS = 3;
export const LOCALS: [number, number][] = [[31, I64], [5, I32], [4, I64], [F64_LOCALS, F64]];

export type Kind = "alu" | "load" | "store" | "fp" | "exec" | "nop" | "fence" | "branch" | "jal" | "jalr" | "stop";

export interface Insn {
  off: number;
  len: number;
  /** 32-bit encoding (compressed instructions expanded). */
  insn: number;
  kind: Kind;
}

/** What translate-fp.ts uses of the writer. */
export interface InsnWriter {
  readonly c: Code;
  readonly k: CoreLayout;
  /** if/block levels opened inside the current block (labels are relative). */
  depth: number;
  /** Set when the region has an instruction gated on the FP state (L_FPOK). */
  fpUsed: boolean;
  getX(r: number): void;
  setX(r: number): void;
  /** Leaves the value load `it` (I-type address) reads, `width` as an
   *  integer load's funct3 (0..6) says: inline TLB probe, core slow path. */
  loadValue(it: Insn, index: number, width: number): void;
  /** Stores what `value` pushes as store `it` (S-type address, width in
   *  funct3) says: inline TLB probe, core slow path. */
  storeValue(it: Insn, index: number, value: () => void): void;
  /** The core's execute() for this one instruction; xReads/xWrite: the x
   *  registers it reads and writes (0: none), when not those its fields name. */
  execHelper(it: Insn, index: number, xReads?: number[], xWrite?: number): void;
}

