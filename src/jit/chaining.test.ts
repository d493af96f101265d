// Region chaining: a loop in one page that calls a function in the next page
// (JAL there, RET back) and, through a register, one in the page after (JALR),
// as a kernel calls helpers in other pages. Within a page a region links its
// own blocks; across pages and at returns the dispatcher's fast lookup goes
// straight on to the next region. `--stats` shows it: almost every region
// entry is a chained one, and the dispatcher is entered about once per slice.
// The results and instruction counts must equal the interpreter's, also when
// the budget ends in the middle of the chain (run in 7-instruction slices).
import { test } from "node:test";
import assert from "node:assert/strict";
import { BareMachine } from "../vmm/bare-machine.js";
import type { ElfImage } from "../loader/elf.js";
import { rType, iType, sType, addi, li, Asm } from "./testing/rv-encode.js";
import { bareImage } from "./testing/bare.js";

const CODE = 0x8000_0000n;
const TOHOST = 0x8020_0000n;
const CALLS = 5000;

const add = (rd: number, rs1: number, rs2: number) => rType(0, rs2, rs1, 0, rd, 0x33);
const sd = (rs2: number, off: number, rs1: number) => sType(off, rs2, rs1, 3, 0x23);
const jalr = (rd: number, rs1: number, off: number) => iType(off, rs1, 0, rd, 0x67);
const RA = 1, T0 = 5, T1 = 6, S0 = 8, S1 = 9, A0 = 10, S2 = 18, S4 = 20;
const BEQ = 0, BLT = 4;

/** s0 = sum over CALLS iterations of f(i) + g(i), f in page 1, g in page 2. */
function program(): { img: ElfImage; expected: bigint } {
  const a = new Asm();
  a.w(addi(S0, 0, 0), addi(S1, 0, 0), ...li(S2, BigInt(CALLS)), ...li(S4, CODE + 0x2000n));
  a.label("loop");
  a.w(addi(A0, S1, 0));
  a.j(RA, "f"); //          direct call into the next page
  a.w(add(S0, S0, A0), addi(A0, S1, 0));
  a.w(jalr(RA, S4, 0)); //  indirect call into the page after
  a.w(add(S0, S0, A0), addi(S1, S1, 1));
  a.b(BLT, S1, S2, "loop");
  let expected = 0n;
  for (let i = 0n; i < BigInt(CALLS); i++) expected += i * 2n + 1n + (i + 5n);
  a.w(...li(T0, expected));
  a.w(addi(T1, 0, 1)); // HTIF exit code 0
  a.b(BEQ, S0, T0, "report");
  a.w(addi(T1, 0, 3)); //  ...or 1: wrong sum
  a.label("report");
  a.w(...li(T0, TOHOST));
  a.w(sd(T1, 0, T0));
  a.label("spin");
  a.j(0, "spin");
  a.org(0x1000);
  a.label("f"); //          f(x) = 2x + 1
  a.w(add(A0, A0, A0), addi(A0, A0, 1), jalr(0, RA, 0));
  a.org(0x2000); //         g(x) = x + 5
  a.w(addi(A0, A0, 5), jalr(0, RA, 0));
  const code = a.bytes();
  return {
    img: bareImage([[CODE, code]], TOHOST),
    expected,
  };
}

function runProgram(jit: boolean, slice?: number): { code: number; s0: bigint; instructions: bigint; m: BareMachine } {
  const { img } = program();
  const m = new BareMachine(img, { memBytes: 4 << 20, console: () => {}, jit: jit ? { threshold: 1 } : false, maxInsns: 10_000_000n });
  let code: number;
  if (slice) {
    for (;;) {
      const before = m.vcpu.stats.instructions;
      assert.ok(before < 10_000_000n, "the program did not finish");
      const end = m.vcpu.runSlice(slice);
      assert.ok(m.vcpu.stats.instructions - before <= BigInt(slice), "a slice never retires more than its budget");
      if (end.kind === "htif") {
        code = Number(end.value >> 1n);
        break;
      }
      assert.equal(end.kind, "budget");
      assert.equal(m.vcpu.stats.instructions - before, BigInt(slice), "a slice retires exactly its budget");
    }
  } else {
    const r = m.run();
    assert.equal(r.kind, "exit");
    code = r.kind === "exit" ? r.code : -1;
  }
  return { code, s0: BigInt.asUintN(64, m.core.fn.getX(m.vcpu.hart, S0)), instructions: m.vcpu.stats.instructions, m };
}

test("calls and returns across pages chain region to region, with the interpreter's results and counts", () => {
  const { expected } = program();
  const interp = runProgram(false);
  assert.equal(interp.s0, expected);
  assert.equal(interp.code, 0);
  const jit = runProgram(true);
  assert.equal(jit.s0, expected);
  assert.equal(jit.code, 0);
  assert.equal(jit.instructions, interp.instructions);
  const s = jit.m.jit!.stats();
  // Each iteration goes loop -> f -> loop -> g -> loop: four region changes.
  assert.ok(s.chained >= 4 * CALLS - 100, `region changes went straight on (${JSON.stringify(s)})`);
  assert.ok(s.entered < CALLS / 10, `the dispatcher was rarely involved (${JSON.stringify(s)})`);
});

test("a chain stops exactly where the slice ends (7-instruction slices)", () => {
  const interp = runProgram(false);
  const sliced = runProgram(true, 7);
  assert.equal(sliced.code, 0);
  assert.equal(sliced.s0, interp.s0);
  assert.equal(sliced.instructions, interp.instructions);
  assert.ok(sliced.m.jit!.stats().chained > 0);
});

/** A loop calling g (next page) and then, through a register, the middle of
 *  g; `direct` false leaves out the second call. */
function twoEntries(direct: boolean): ElfImage {
  const G = CODE + 0x1000n;
  const a = new Asm();
  a.w(addi(S1, 0, 0), ...li(S2, 200n), addi(A0, 0, 0), addi(S0, 0, 0));
  a.label("loop");
  a.j(RA, "g");
  if (direct) a.w(...li(S4, G + 8n), jalr(RA, S4, 0));
  a.w(addi(S1, S1, 1));
  a.b(BLT, S1, S2, "loop");
  a.w(...li(T0, TOHOST), addi(T1, 0, 1), sd(T1, 0, T0));
  a.label("spin");
  a.j(0, "spin");
  a.org(0x1000);
  a.label("g"); //         g: a0 += 1, then its middle: s0 += 2
  a.w(addi(A0, A0, 1));
  a.b(BEQ, A0, 0, "ret"); // never taken: ends the first block
  a.w(addi(S0, S0, 2)); //   G + 8: the middle, a block of g's region
  a.label("ret");
  a.w(jalr(0, RA, 0));
  return bareImage([[CODE, a.bytes()]], TOHOST);
}

test("a block translated inside another region is entered there, without a translation of its own", () => {
  const regions = (direct: boolean) => {
    const m = new BareMachine(twoEntries(direct), { memBytes: 4 << 20, console: () => {}, jit: { threshold: 1 }, maxInsns: 1_000_000n });
    assert.deepEqual(m.run(), { kind: "exit", code: 0 });
    assert.equal(BigInt.asUintN(64, m.core.fn.getX(m.vcpu.hart, S0)), direct ? 800n : 400n, "s0: two per call of g, two per call of its middle");
    return m.jit!.stats().regions;
  };
  // The direct call adds code to the loop (a new block after it returns) but
  // g's middle needs no region: it already is a block of g's.
  assert.equal(regions(true) - regions(false), 1);
});
