// The core's half of dirty logging (hart.ts DIRTY_LOG_OFF, p2m.ts): a guest
// store sets its page's bit in the bitmap while the log is on, and nothing is
// written while it is off.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHart } from "./testing/hart-harness.mjs";

const I = (op: number, rd: number, f3: number, rs1: number, imm: number) =>
  (((imm & 0xfff) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op) >>> 0;
const S = (f3: number, rs1: number, rs2: number, imm: number) =>
  ((((imm >> 5) & 0x7f) << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | ((imm & 0x1f) << 7) | 0x23) >>> 0;
const AUIPC = (rd: number, imm20: number) => ((imm20 << 12) | (rd << 7) | 0x17) >>> 0;
const addi = (rd: number, rs1: number, imm: number) => I(0x13, rd, 0, rs1, imm);
const ld = (rd: number, rs1: number, imm: number) => I(0x03, rd, 3, rs1, imm);
const sd = (rs1: number, rs2: number, imm: number) => S(3, rs1, rs2, imm);
/** amoadd.d rd, rs2, (rs1) */
const amoaddD = (rd: number, rs1: number, rs2: number) => ((rs2 << 20) | (rs1 << 15) | (3 << 12) | (rd << 7) | 0x2f) >>> 0;
const JSELF = 0x0000006f;

const PAGES = 40; // more than 32: the bitmap has two words

// At RAM_BASE: a0 = page 3, a2 = page 35; load page 3, store page 3 twice,
// an AMO on page 35, then spin.
const PROGRAM = [
  AUIPC(10, 3), AUIPC(12, 35), addi(12, 12, -4), addi(11, 0, 0x5a),
  ld(13, 10, 0x10), sd(10, 11, 0), sd(10, 11, 8), amoaddD(14, 12, 11), JSELF,
];

function setup() {
  const t = createHart(PROGRAM, PAGES);
  const bitmap = t.ram + PAGES * 4096; // past RAM, zeroed memory
  const words = () => [t.dv.getUint32(bitmap, true), t.dv.getUint32(bitmap + 4, true)];
  return { ...t, bitmap, words };
}

test("with the log on, guest stores and AMOs set their pages' bits; loads and fetches do not", () => {
  const t = setup();
  assert.equal(t.core.setDirtyLog(t.hart, t.bitmap), 1);
  t.core.tlbFlush(t.hart);
  t.run(8);
  assert.deepEqual(t.words(), [1 << 3, 1 << (35 - 32)]);
  assert.equal(t.dv.getBigUint64(t.ram + 35 * 4096, true), 0x5an, "the AMO ran");
  assert.equal(t.dv.getBigUint64(t.hart + t.core.DIRTY_LOG_OFF.value, true), BigInt(t.bitmap));
});

test("with the log off, nothing is written to the bitmap", () => {
  const t = setup();
  t.run(8);
  assert.deepEqual(t.words(), [0, 0]);
  assert.equal(t.dv.getBigUint64(t.ram + 35 * 4096, true), 0x5an, "the AMO ran");
});

test("a store TLB hit is not logged: clearing bits needs a TLB flush after", () => {
  const t = setup();
  t.core.setDirtyLog(t.hart, t.bitmap);
  t.core.tlbFlush(t.hart);
  t.run(6); // up to the first store to page 3
  assert.deepEqual(t.words(), [1 << 3, 0]);
  t.dv.setUint32(t.bitmap, 0, true); // the host takes the bit
  t.run(1); // second store: a store TLB hit
  assert.deepEqual(t.words(), [0, 0], "not logged while the store TLB entry lives");
  t.core.setPc(t.hart, t.pc() - 4n);
  t.core.tlbFlush(t.hart);
  t.run(1);
  assert.deepEqual(t.words(), [1 << 3, 0], "logged again after the flush");
});

test("setDirtyLog refuses a misaligned bitmap; a hart reset keeps the log", () => {
  const t = setup();
  assert.equal(t.core.setDirtyLog(t.hart, t.bitmap + 2), 0);
  assert.equal(t.dv.getBigUint64(t.hart + t.core.DIRTY_LOG_OFF.value, true), 0n);
  t.core.setDirtyLog(t.hart, t.bitmap);
  t.core.hartReset(t.hart, 0n, 0x8000_0000n);
  t.core.setP2m(t.hart, t.p2m, 0x80000n, BigInt(PAGES));
  t.run(8);
  assert.deepEqual(t.words(), [1 << 3, 1 << 3]);
});
