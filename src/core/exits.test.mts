// The core's contract with the hypervisor: every kind of VM exit, what the run
// record holds for it, and how the hypervisor completes it. Guest code is
// hand-encoded here so the test needs no cross toolchain.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHart, RAM_BASE } from "./testing/hart-harness.mjs";

// --- a few RV64 encoders -------------------------------------------------------
const I = (op: number, rd: number, f3: number, rs1: number, imm: number) =>
  (((imm & 0xfff) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op) >>> 0;
const S = (f3: number, rs1: number, rs2: number, imm: number) =>
  ((((imm >> 5) & 0x7f) << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | ((imm & 0x1f) << 7) | 0x23) >>> 0;
const LUI = (rd: number, imm20: number) => ((imm20 << 12) | (rd << 7) | 0x37) >>> 0;
const AUIPC = (rd: number, imm20: number) => ((imm20 << 12) | (rd << 7) | 0x17) >>> 0;
const addi = (rd: number, rs1: number, imm: number) => I(0x13, rd, 0, rs1, imm);
const ld = (rd: number, rs1: number, imm: number) => I(0x03, rd, 3, rs1, imm);
const lw = (rd: number, rs1: number, imm: number) => I(0x03, rd, 2, rs1, imm);
const sd = (rs1: number, rs2: number, imm: number) => S(3, rs1, rs2, imm);
const J = (rd: number, off: number) =>
  ((((off >> 20) & 1) << 31) | (((off >> 1) & 0x3ff) << 21) | (((off >> 11) & 1) << 20) | (((off >> 12) & 0xff) << 12) | (rd << 7) | 0x6f) >>> 0;
const ECALL = 0x00000073;
const WFI = 0x10500073;
const JSELF = 0x0000006f; // jal x0, 0

function machine(code: number[]) {
  const t = createHart(code);
  t.writeCode([JSELF], 0x800); // a trap handler that spins
  return {
    ...t,
    runInsns: () => Number(t.rec("RUN_INSNS_OFF")),
    addr: () => t.rec("RUN_ADDR_OFF"),
    data: () => t.rec("RUN_DATA_OFF"),
    size: () => Number(t.rec("RUN_SIZE_OFF")),
    write: () => Number(t.rec("RUN_WRITE_OFF")),
    complete: (how: bigint, data = 0n) => {
      t.setRec("RUN_DATA_OFF", data);
      t.setRec("RUN_MMIO_DONE_OFF", how);
    },
  };
}

test("an MMIO load exits with address and size, and completes with the hypervisor's data", () => {
  // a0 = 0x1000_0000 (a device), then lw a1, 4(a0) sign-extends what the device returns.
  const m = machine([LUI(10, 0x10000), lw(11, 10, 4), JSELF]);
  const c = m.core;
  assert.equal(m.run(), c.EXIT_MMIO_READ.value);
  assert.equal(m.addr(), 0x1000_0004n);
  assert.equal(m.size(), 4);
  assert.equal(m.write(), 0);
  assert.equal(m.pc(), RAM_BASE + 4n, "the load has not retired");
  m.complete(c.MMIO_COMPLETED.value, 0x8000_0001n);
  assert.equal(m.run(1), c.EXIT_BUDGET.value);
  assert.equal(m.x(11), 0xffff_ffff_8000_0001n);
  assert.equal(m.pc(), RAM_BASE + 8n);
});

test("an MMIO store exits with the value, and retires once completed", () => {
  const m = machine([LUI(10, 0x10000), addi(11, 0, 0x5a), sd(10, 11, 8), JSELF]);
  const c = m.core;
  assert.equal(m.run(), c.EXIT_MMIO_WRITE.value);
  assert.deepEqual([m.addr(), m.size(), m.write(), m.data()], [0x1000_0008n, 8, 1, 0x5an]);
  m.complete(c.MMIO_COMPLETED.value);
  assert.equal(m.run(1), c.EXIT_BUDGET.value);
  assert.equal(m.pc(), RAM_BASE + 12n);
});

test("an MMIO access completed, then stopped by a p2m fault before it re-executes, is not performed twice", () => {
  // The hypervisor completes the store and the load, then the code page goes
  // away before the vCPU runs again (a lazily restored snapshot, a page
  // swapped out): the fetch faults first, and the p2m-fault exit writes its
  // own address in the run record. After the mapping, each access must take
  // its completion, not exit to the device a second time.
  const m = machine([LUI(10, 0x10000), addi(11, 0, 0x5a), sd(10, 11, 8), lw(12, 10, 4), JSELF]);
  const c = m.core;
  const codePage = m.dv.getUint32(m.p2m, true);
  const evictCode = () => {
    m.dv.setUint32(m.p2m, 0, true);
    c.tlbFlush(m.hart);
    assert.equal(m.run(), c.EXIT_P2M_FAULT.value);
    assert.equal(m.write(), 2, "the fault is the instruction fetch's");
    m.dv.setUint32(m.p2m, codePage, true);
    c.tlbFlush(m.hart);
  };
  assert.equal(m.run(), c.EXIT_MMIO_WRITE.value);
  m.complete(c.MMIO_COMPLETED.value);
  evictCode();
  assert.equal(m.run(1), c.EXIT_BUDGET.value, "the store retires without a second exit");
  assert.equal(m.pc(), RAM_BASE + 12n);
  assert.equal(m.run(), c.EXIT_MMIO_READ.value);
  m.complete(c.MMIO_COMPLETED.value, 0x1234n);
  evictCode();
  assert.equal(m.run(1), c.EXIT_BUDGET.value, "the load retires with the device's data");
  assert.equal(m.x(12), 0x1234n);
  assert.equal(m.pc(), RAM_BASE + 16n);
});

test("an access where no device answers becomes a load access fault in the guest", () => {
  const m = machine([LUI(10, 0x30000), ld(11, 10, 0), JSELF]);
  const c = m.core;
  c.csrWrite(m.hart, 0x305, RAM_BASE + 0x800n); // mtvec
  assert.equal(m.run(), c.EXIT_MMIO_READ.value);
  m.complete(c.MMIO_NO_DEVICE.value);
  m.run(1);
  assert.equal(m.csr(0x342), 5n, "mcause = load access fault");
  assert.equal(m.csr(0x343), 0x3000_0000n, "mtval = the address");
  assert.equal(m.csr(0x341), RAM_BASE + 4n, "mepc = the load");
});

test("a p2m fault exits with the guest-physical address and the access restarts after mapping", () => {
  const m = machine([AUIPC(10, 4), addi(11, 0, 7), sd(10, 11, 16), ld(12, 10, 16), JSELF]);
  const c = m.core;
  // Unmap guest page 4 (0x8000_4000): the hypervisor will "allocate" it later.
  const entry = m.dv.getUint32(m.p2m + 16, true);
  m.dv.setUint32(m.p2m + 16, 0, true);
  c.tlbFlush(m.hart);
  assert.equal(m.run(), c.EXIT_P2M_FAULT.value);
  assert.equal(m.addr(), 0x8000_4010n);
  assert.equal(m.write(), 1);
  m.dv.setUint32(m.p2m + 16, entry, true);
  c.tlbFlush(m.hart);
  assert.equal(m.run(2), c.EXIT_BUDGET.value);
  assert.equal(m.x(12), 7n);
});

test("ECALL from S-mode in SBI mode is a hypercall exit with pc past the ecall", () => {
  const m = machine([addi(17, 0, 0x10), addi(10, 0, 3), ECALL, JSELF]);
  const c = m.core;
  c.setSbiMode(m.hart, 1);
  c.setPriv(m.hart, 1);
  assert.equal(m.run(), c.EXIT_SBI.value);
  assert.equal(m.x(17), 0x10n);
  assert.equal(m.pc(), RAM_BASE + 12n);
  assert.equal(m.runInsns(), 3, "the ecall retired");
});

test("WFI with nothing pending exits; a timer compare reached wakes the hart into its handler", () => {
  const m = machine([WFI, JSELF]);
  const c = m.core;
  c.csrWrite(m.hart, 0x305, RAM_BASE + 0x800n); // mtvec
  c.csrWrite(m.hart, 0x304, 1n << 7n); //         mie.MTIE
  c.csrWrite(m.hart, 0x300, 1n << 3n); //         mstatus.MIE
  c.setMtimecmp(m.hart, 1000n);
  assert.equal(m.run(), c.EXIT_WFI.value);
  assert.equal(Boolean(c.isWaiting(m.hart)), true);
  assert.equal(Boolean(c.wakeupPending(m.hart)), false);
  assert.equal(BigInt.asUintN(64, c.timerDeadline(m.hart)), 1000n);
  c.setTime(m.hart, 1000n);
  assert.equal(Boolean(c.wakeupPending(m.hart)), true);
  m.run(1);
  assert.equal(m.csr(0x342), (1n << 63n) | 7n, "mcause = machine timer interrupt");
  assert.equal(m.csr(0x341), RAM_BASE + 4n, "mepc = after the wfi");
});

test("the budget bounds a run exactly and time advances with retired instructions", () => {
  const m = machine([addi(10, 10, 1), J(0, -4)]);
  const c = m.core;
  c.setTickInsns(m.hart, 10);
  assert.equal(m.run(1000), c.EXIT_BUDGET.value);
  assert.equal(m.runInsns(), 1000);
  assert.equal(m.x(10), 500n);
  assert.equal(BigInt.asUintN(64, c.getTime(m.hart)), 100n);
  assert.equal(m.csr(0xb02), 1000n, "minstret");
});

test("a store to HTIF tohost exits after the store retired, with the value", () => {
  const m = machine([AUIPC(10, 1), addi(11, 0, 1), sd(10, 11, 0), JSELF]);
  const c = m.core;
  c.setHtifTohost(m.hart, 0x8000_1000n);
  assert.equal(m.run(), c.EXIT_HTIF.value);
  assert.equal(m.data(), 1n);
  assert.equal(m.pc(), RAM_BASE + 12n);
});
