// Self-modifying code under binary translation, next to the interpreter.
//
// Hand-encoded bare-metal programs that rewrite their own instructions:
//   1. a loop calls a function (`li a0, k; ret`) in the loop's own page or in
//      the next one and sums a0; at one call (or before every call) the loop
//      rewrites the function's `li` and runs FENCE.I;
//   2. a store rewrites an instruction later in the block it is part of, and
//      execution falls through into it (each loop iteration writes a new one);
//   3. a store turns the branch that ends its own block into a no-op;
//   4. an AMO rewrites its own block and its rd gets the old word.
// The rewriting store is a plain sw/sh, an AMO or an FP store (translated code
// does the last two through the core's execute helper). Every program checks
// its own result (exit code 0, or a case number) and the test checks the
// result register too, in three engines: the interpreter, the JIT with every
// block translated before its first execution, and the same JIT run in slices
// of 7 instructions. All three must retire the same number of instructions.
import { test } from "node:test";
import assert from "node:assert/strict";
import { BareMachine } from "../vmm/bare-machine.js";
import type { ElfImage } from "../loader/elf.js";
import { rType, iType, sType, addi, slli, lui, csrrw, csrrs, FENCE_I, li, Asm as BaseAsm } from "./testing/rv-encode.js";
import { bareImage } from "./testing/bare.js";

const CODE = 0x8000_0000n;
const TOHOST = 0x8020_0000n;

// ---- encoders (unprivileged spec formats) ---------------------------------------


const andi = (rd: number, rs1: number, imm: number) => iType(imm, rs1, 7, rd, 0x13);
const add = (rd: number, rs1: number, rs2: number) => rType(0, rs2, rs1, 0, rd, 0x33);
const or = (rd: number, rs1: number, rs2: number) => rType(0, rs2, rs1, 6, rd, 0x33);
const sw = (rs2: number, off: number, rs1: number) => sType(off, rs2, rs1, 2, 0x23);
const sh = (rs2: number, off: number, rs1: number) => sType(off, rs2, rs1, 1, 0x23);
const sd = (rs2: number, off: number, rs1: number) => sType(off, rs2, rs1, 3, 0x23);
const fsw = (frs2: number, off: number, rs1: number) => sType(off, frs2, rs1, 2, 0x27);
const fmvWX = (fd: number, rs1: number) => rType(0x78, 0, rs1, 0, fd, 0x53);
const amoswapW = (rd: number, rs2: number, rs1: number) => rType(0x01 << 2, rs2, rs1, 2, rd, 0x2f);
const RET = iType(0, 1, 0, 0, 0x67); // jalr x0, 0(ra)
const NOP = addi(0, 0, 0);
/** c.li rd, imm (-32..31) */
const cLi = (rd: number, imm: number) => (2 << 13) | (((imm >> 5) & 1) << 12) | (rd << 7) | ((imm & 0x1f) << 2) | 1;
const C_RET = 0x8082; // c.jr ra

// Registers.
const RA = 1, T0 = 5, T1 = 6, T2 = 7, S0 = 8, S1 = 9, A0 = 10, S2 = 18, S3 = 19, S4 = 20, S5 = 21, S6 = 22;

/** The shared assembler plus `la`: a label's address in a fixed number of instructions. */
class Asm extends BaseAsm {
  /** rd = address of `label` (CODE + offset below 0x10000: five instructions). */
  la(rd: number, label: string): void {
    const hiLo = () => {
      const off = this.at(label);
      const hi = (off + 0x800) >> 12;
      return { hi, lo: off - (hi << 12) };
    };
    this.w(addi(rd, 0, 1), slli(rd, rd, 31)); // CODE
    this.w(() => lui(T2, hiLo().hi), () => addi(T2, T2, hiLo().lo), add(rd, rd, T2));
  }
}

const BNE = 1, BLT = 4;

/** Prologue: mtvec = `trap` (any trap fails the program), FP on. */
function prologue(a: Asm): void {
  a.la(T0, "trap");
  a.w(csrrw(0, 0x305, T0));
  a.w(lui(T0, 0x2), csrrs(0, 0x300, T0)); // mstatus.FS = Initial
}

/** Epilogue: exit 0 when s0 == expected, else 1; traps exit with 100 + mcause. */
function epilogue(a: Asm, expected: bigint): void {
  a.w(...li(T0, expected));
  a.b(BNE, S0, T0, "wrong");
  a.w(addi(T1, 0, 1));
  a.j(0, "report");
  a.label("wrong");
  a.w(addi(T1, 0, (1 << 1) | 1));
  a.j(0, "report");
  while (a.size % 4 !== 0) a.h(0);
  a.label("trap");
  a.w(csrrs(T1, 0x342, 0), addi(T1, T1, 100), slli(T1, T1, 1), addi(T1, T1, 1));
  a.label("report");
  a.w(...li(T0, TOHOST), sd(T1, 0, T0));
  a.label("spin");
  a.j(0, "spin");
}

function image(a: Asm): ElfImage {
  const code = a.bytes();
  return bareImage([[CODE, code]], TOHOST);
}

// How the program writes the new instruction (in t1, or s5) to the address in a register.
type Patch = "sw" | "sh" | "amoswap.w" | "fsw";
const PATCHES: Patch[] = ["sw", "sh", "amoswap.w", "fsw"];

/** Store the instruction in `val` at the address in `addr` (t2 is free). */
function emitPatch(a: Asm, how: Patch, val: number, addr: number): void {
  switch (how) {
    case "sw": a.w(sw(val, 0, addr)); break;
    case "sh": a.w(sh(val, 0, addr)); break;
    case "amoswap.w": a.w(amoswapW(0, val, addr)); break;
    case "fsw": a.w(fmvWX(0, val), fsw(0, 0, addr)); break;
  }
}

/** The function `li a0, k; ret`: compressed for a 16-bit patch. */
function emitFunc(a: Asm, how: Patch, k: number): void {
  if (how === "sh") {
    a.h(cLi(A0, k));
    a.h(C_RET);
  } else {
    a.w(addi(A0, 0, k), RET);
  }
}
const liA0 = (how: Patch, k: number) => (how === "sh" ? cLi(A0, k) : addi(A0, 0, k));

// ---- program 1: a function the loop keeps calling ----------------------------------

const CALLS = 200;
const PATCH_AT = 80;

/**
 * Sum f() over CALLS calls into s0. `once`: after call PATCH_AT the function's
 * `li a0, 1` becomes `li a0, 2`. `every`: before call i it becomes `li a0, i & 15`
 * (well past the number of rewrites after which the JIT leaves a page alone).
 */
function callerProgram(funcPage: "same" | "next", how: Patch, mode: "once" | "every"): { img: ElfImage; expected: bigint } {
  const a = new Asm();
  prologue(a);
  a.w(addi(S0, 0, 0), addi(S1, 0, 0), addi(S2, 0, CALLS), addi(S3, 0, PATCH_AT));
  a.la(S4, "func");
  a.w(...li(S5, BigInt(liA0(how, 2))));
  a.w(...li(S6, BigInt(liA0(how, 0))));
  a.label("loop");
  if (mode === "every") {
    // t1 = li a0, (i & 15)
    a.w(andi(T1, S1, 15));
    a.w(slli(T1, T1, how === "sh" ? 2 : 20), or(T1, T1, S6));
    emitPatch(a, how, T1, S4);
    a.w(FENCE_I);
  }
  a.j(RA, "func");
  a.w(add(S0, S0, A0), addi(S1, S1, 1));
  if (mode === "once") {
    a.b(BNE, S1, S3, "skip");
    emitPatch(a, how, S5, S4);
    a.w(FENCE_I);
    a.label("skip");
  }
  a.b(BLT, S1, S2, "loop");
  let expected = 0n;
  for (let i = 0; i < CALLS; i++) expected += mode === "once" ? (i < PATCH_AT ? 1n : 2n) : BigInt(i & 15);
  epilogue(a, expected);
  a.org(funcPage === "same" ? 0x800 : 0x1100);
  a.label("func");
  emitFunc(a, how, 1);
  return { img: image(a), expected };
}

// ---- program 2: a store into its own block -------------------------------------------

/**
 * Iteration i (1..n) writes `li a0, i` over the instruction `target` a few
 * instructions later in the same block, then falls through into it; s0 sums a0.
 * `between`: what separates the store from the target.
 */
function ownBlockProgram(how: Patch, n: number, between: "nothing" | "fence.i" | "three"): { img: ElfImage; expected: bigint } {
  const a = new Asm();
  prologue(a);
  a.w(addi(S0, 0, 0), addi(S1, 0, 1), addi(S2, 0, n + 1));
  a.la(S4, "target");
  a.w(...li(S6, BigInt(liA0(how, 0))));
  a.label("loop");
  a.w(slli(T1, S1, how === "sh" ? 2 : 20), or(T1, T1, S6)); // t1 = li a0, i
  emitPatch(a, how, T1, S4);
  if (between === "fence.i") a.w(FENCE_I);
  if (between === "three") a.w(addi(T2, T2, 1), addi(T2, T2, 1), addi(T2, T2, 1));
  a.label("target");
  if (how === "sh") a.h(cLi(A0, -1));
  else a.w(addi(A0, 0, -1)); // never what iteration i wants
  a.w(add(S0, S0, A0), addi(S1, S1, 1));
  a.b(BLT, S1, S2, "loop");
  epilogue(a, BigInt((n * (n + 1)) / 2));
  return { img: image(a), expected: BigInt((n * (n + 1)) / 2) };
}

// ---- program 3: a store that removes its own block's branch ----------------------------

/** s0 = 7 only if the `j over` after the store became a no-op. */
function ownBranchProgram(how: Exclude<Patch, "sh">): { img: ElfImage; expected: bigint } {
  const a = new Asm();
  prologue(a);
  a.w(addi(S0, 0, 0));
  a.la(S4, "branch");
  a.w(...li(S5, BigInt(NOP)));
  emitPatch(a, how, S5, S4);
  a.label("branch");
  a.j(0, "over");
  a.w(addi(S0, 0, 7));
  a.label("over");
  epilogue(a, 7n);
  return { img: image(a), expected: 7n };
}

// ---- program 4: an AMO that rewrites its own block returns the old word ----------------------

/** s0 = the old instruction word amoswap.w read back (sign-extended) + 5, the
 *  new instruction's value: both the AMO's rd and the new code must be seen. */
function amoOldWordProgram(): { img: ElfImage; expected: bigint } {
  const a = new Asm();
  prologue(a);
  a.la(S4, "target");
  a.w(...li(T1, BigInt(addi(A0, 0, 5))));
  a.w(amoswapW(S5, T1, S4), addi(S0, S5, 0));
  a.label("target");
  a.w(addi(A0, 0, -1));
  a.w(add(S0, S0, A0));
  const expected = BigInt.asIntN(32, BigInt(addi(A0, 0, -1))) + 5n;
  epilogue(a, BigInt.asUintN(64, expected));
  return { img: image(a), expected: BigInt.asUintN(64, expected) };
}

// ---- running ---------------------------------------------------------------------------------

type Engine = "interpreter" | "jit" | "jit, 7-instruction slices";
const ENGINES: Engine[] = ["interpreter", "jit", "jit, 7-instruction slices"];

interface Outcome {
  code: number;
  s0: bigint;
  instructions: bigint;
  machine: BareMachine;
}

function run(img: ElfImage, engine: Engine): Outcome {
  const m = new BareMachine(img, { memBytes: 4 << 20, console: () => {}, jit: engine === "interpreter" ? false : { threshold: 1 }, maxInsns: 1_000_000n });
  let code: number;
  if (engine === "jit, 7-instruction slices") {
    for (;;) {
      assert.ok(m.vcpu.stats.instructions < 1_000_000n, "the program did not finish");
      const end = m.vcpu.runSlice(7);
      if (end.kind === "htif") {
        code = Number(end.value >> 1n);
        break;
      }
      assert.equal(end.kind, "budget");
    }
  } else {
    const r = m.run();
    assert.equal(r.kind, "exit", `the program did not finish: ${JSON.stringify(r, (_k, v) => (typeof v === "bigint" ? `0x${v.toString(16)}` : v))}`);
    code = r.kind === "exit" ? r.code : -1;
  }
  return { code, s0: BigInt.asUintN(64, m.core.fn.getX(m.vcpu.hart, S0)), instructions: m.vcpu.stats.instructions, machine: m };
}

/** Run in every engine; check the result and that the engines agree. */
function runEverywhere(name: string, prog: { img: ElfImage; expected: bigint }, checkJit: (o: Outcome) => void): void {
  const outcomes = ENGINES.map((engine) => ({ engine, o: run(prog.img, engine) }));
  for (const { engine, o } of outcomes) {
    assert.equal(o.s0, prog.expected, `${name}, ${engine}: s0 = ${o.s0}, expected ${prog.expected} (exit code ${o.code})`);
    assert.equal(o.code, 0, `${name}, ${engine}: exit code ${o.code} (1: wrong sum; 100 + n: trap with mcause n)`);
  }
  const base = outcomes[0].o.instructions;
  for (const { engine, o } of outcomes.slice(1)) {
    assert.equal(o.instructions, base, `${name}: ${engine} retired ${o.instructions} instructions, the interpreter ${base}`);
    checkJit(o);
  }
}

const jitStats = (o: Outcome) => o.machine.jit!.stats();

for (const page of ["same", "next"] as const) {
  for (const how of PATCHES) {
    test(`a function in the ${page} page rewritten once by ${how} (+ fence.i): the calls after it return the new value`, () => {
      runEverywhere(`${page} page, ${how}`, callerProgram(page, how, "once"), (o) => {
        const s = jitStats(o);
        assert.ok(s.invalidations > 0, `the store retired translations (${JSON.stringify(s)})`);
        // The loop and the function go on running translated after the rewrite.
        assert.ok(BigInt(s.translatedInstructions) * 2n > o.instructions, `mostly translated code ran (${JSON.stringify(s)}, ${o.instructions} in all)`);
      });
    });
  }
  test(`a function in the ${page} page rewritten before every call: each call runs the latest version`, () => {
    runEverywhere(`${page} page, every call`, callerProgram(page, "sw", "every"), (o) => {
      assert.ok(jitStats(o).invalidations > 0);
      assert.ok(jitStats(o).translatedInstructions > 0);
    });
  });
}

for (const how of PATCHES) {
  for (const between of ["nothing", "fence.i", "three"] as const) {
    test(`a ${how} rewrites a later instruction of its own block (${between} in between): the new one runs at once`, () => {
      runEverywhere(`own block, ${how}, ${between} between`, ownBlockProgram(how, 20, between), (o) => {
        const s = jitStats(o);
        assert.ok(s.invalidations >= 20, `every iteration's store retired the block's translation (${JSON.stringify(s)})`);
        assert.ok(s.translatedInstructions > 0);
      });
    });
  }
}

test("a store into its own block 300 times (past the JIT's rewrite limit for a page) stays exact", () => {
  runEverywhere("own block, 300 iterations", ownBlockProgram("sw", 300, "nothing"), (o) => {
    assert.ok(jitStats(o).invalidations > 0);
  });
});

for (const how of ["sw", "amoswap.w", "fsw"] as const) {
  test(`a ${how} turns the jump that ends its own block into a no-op: execution falls through`, () => {
    runEverywhere(`own branch, ${how}`, ownBranchProgram(how), (o) => {
      assert.ok(jitStats(o).invalidations > 0);
    });
  });
}

test("an amoswap.w that rewrites its own block: rd holds the old word, the new instruction runs", () => {
  runEverywhere("amoswap.w old word", amoOldWordProgram(), (o) => {
    assert.ok(jitStats(o).invalidations > 0);
  });
});
