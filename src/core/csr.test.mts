// CSR read-modify-write rules the hypervisor relies on, with hand-encoded
// guest code (no cross toolchain needed).
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHart } from "./testing/hart-harness.mjs";

const MIP = 0x344;
const SSIP = 1n << 1n, SEIP = 1n << 9n;
const T0 = 5;
const addi = (rd: number, rs1: number, imm: number) => (((imm & 0xfff) << 20) | (rs1 << 15) | (rd << 7) | 0x13) >>> 0;
const csrrs = (rd: number, csr: number, rs1: number) => ((csr << 20) | (rs1 << 15) | (2 << 12) | (rd << 7) | 0x73) >>> 0;
const csrrc = (rd: number, csr: number, rs1: number) => ((csr << 20) | (rs1 << 15) | (3 << 12) | (rd << 7) | 0x73) >>> 0;
const JSELF = 0x0000006f;

function seipLine(t: ReturnType<typeof createHart>, level: number) {
  t.core.setIrqLine(t.hart, t.core.IRQ_LINE_SEIP.value, level);
}

test("CSRRS/CSRRC on mip modify the software-writable SEIP bit, not the PLIC's line (spec 3.1.9)", () => {
  // M-mode: set SSIP while the line is high, then set and clear SEIP itself.
  const t = createHart([
    addi(T0, 0, 2), csrrs(0, MIP, T0), // csrs mip, SSIP     (line high)
    addi(T0, 0, 0x200), csrrs(0, MIP, T0), // csrs mip, SEIP (line low)
    csrrc(0, MIP, T0), //                 csrc mip, SEIP     (line high)
    JSELF,
  ]);
  seipLine(t, 1);
  t.run(2);
  assert.equal(t.csr(MIP), SSIP | SEIP, "a read ORs in the line");
  seipLine(t, 0);
  assert.equal(t.csr(MIP), SSIP, "the line's SEIP was not copied into the writable bit");
  t.run(2);
  assert.equal(t.csr(MIP), SSIP | SEIP, "software sets its own SEIP");
  seipLine(t, 1);
  t.run(1);
  assert.equal(t.csr(MIP), SSIP | SEIP, "the line still reads");
  seipLine(t, 0);
  assert.equal(t.csr(MIP), SSIP, "software cleared its SEIP while the line was high");
});

test("the hypervisor's csrSet (an IPI's SSIP) does not latch the line's SEIP either", () => {
  const t = createHart([JSELF]);
  seipLine(t, 1);
  t.core.csrSet(t.hart, MIP, SSIP);
  seipLine(t, 0);
  assert.equal(t.csr(MIP), SSIP);
  assert.equal(Boolean(t.core.wakeupPending(t.hart)), false, "nothing enabled in mie");
  t.core.csrWrite(t.hart, 0x304, SEIP); // mie.SEIE
  assert.equal(Boolean(t.core.wakeupPending(t.hart)), false, "no external interrupt is pending");
});
