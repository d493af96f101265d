// Translated code must never outlive the instructions it was made from.
// Self-modifying code: a guest rewrites a function it keeps calling, and an
// instruction later in the very block that does the store. Code written by a
// device: a virtio-blk read DMAs new instructions over a function binary
// translation has already compiled (through the bounds-checked guest-memory
// accessor every device uses). Each time the new instructions must run.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BareMachine } from "../vmm/bare-machine.js";
import type { ElfImage } from "../loader/elf.js";
import { VirtioBlk } from "../devices/virtio/blk.js";
import { TestDriver } from "../devices/virtio/test-driver.js";
import { openDisk } from "../backends/disk/disk.js";

// RV64I encodings (unprivileged spec chapter 2 formats).
const i = (op: number, rd: number, f3: number, rs1: number, imm: number) => (((imm & 0xfff) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op) >>> 0;
const s = (f3: number, rs1: number, rs2: number, imm: number) => ((((imm >> 5) & 0x7f) << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | ((imm & 31) << 7) | 0x23) >>> 0;
const lui = (rd: number, imm20: number) => (((imm20 & 0xfffff) << 12) | (rd << 7) | 0x37) >>> 0;
const jal = (rd: number, off: number) =>
  ((((off >> 20) & 1) << 31) | (((off >> 1) & 0x3ff) << 21) | (((off >> 11) & 1) << 20) | (((off >> 12) & 0xff) << 12) | (rd << 7) | 0x6f) >>> 0;
const bne = (rs1: number, rs2: number, off: number) => (beq(rs1, rs2, off) | (1 << 12)) >>> 0;
const FENCE_I = 0x0000100f;
const beq = (rs1: number, rs2: number, off: number) =>
  ((((off >> 12) & 1) << 31) | (((off >> 5) & 0x3f) << 25) | (rs2 << 20) | (rs1 << 15) | (((off >> 1) & 15) << 8) | (((off >> 11) & 1) << 7) | 0x63) >>> 0;
const addi = (rd: number, rs1: number, imm: number) => i(0x13, rd, 0, rs1, imm);
const ret = () => i(0x67, 0, 0, 1, 0);

const RAM = 0x8000_0000n;
const FUNC = RAM + 0x2000n; // in its own page
const DATA = RAM + 0x10_0000n; // LAST (what the function returned), then STOP
const TOHOST = RAM + 0x20_0000n;

function words(ws: number[]): Uint8Array {
  const b = new Uint8Array(ws.length * 4);
  ws.forEach((w, k) => new DataView(b.buffer).setUint32(k * 4, w, true));
  return b;
}

/** loop { a0 = f(); LAST = a0 } until STOP != 0; then exit through HTIF. */
function program(): ElfImage {
  return image(
    [
      lui(5, 0x80100), i(0x13, 5, 1, 5, 32), i(0x13, 5, 5, 5, 32), // x5 = DATA (zero-extended)
      jal(1, Number(FUNC - RAM) - 12), // loop: call f
      s(3, 5, 10, 0), // sd a0, LAST
      i(0x03, 7, 3, 5, 8), // ld x7, STOP
      beq(7, 0, -12),
      ...exitWords(),
    ],
    [addi(10, 0, 1), ret()],
  );
}

/** Exit through HTIF (tohost = 1) and spin: words for the end of a program. */
function exitWords(): number[] {
  return [lui(6, 0x80200), i(0x13, 6, 1, 6, 32), i(0x13, 6, 5, 6, 32), addi(7, 0, 1), s(3, 6, 7, 0), jal(0, 0)];
}

/** Code at RAM (the entry) and a function at FUNC, in its own page. */
function image(main: number[], f: number[]): ElfImage {
  const m = words(main), fb = words(f);
  return {
    entry: RAM,
    segments: [
      { paddr: RAM, vaddr: RAM, data: m, memsz: BigInt(m.length) },
      { paddr: FUNC, vaddr: FUNC, data: fb, memsz: BigInt(fb.length) },
    ],
    symbol: (name) => (name === "tohost" ? TOHOST : undefined),
  };
}

for (const engine of ["jit", "interpreter"] as const) {
  test(`${engine}: instructions a virtio-blk read writes over translated code run from the next call`, (t) => {
    const dir = mkdtempSync(join(tmpdir(), "tsvisor-dma-"));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    // The disk's first sector holds the new function: a0 = 2.
    const sector = new Uint8Array(512);
    sector.set(words([addi(10, 0, 2), ret()]));
    writeFileSync(join(dir, "code.img"), sector);

    const m = new BareMachine(program(), { memBytes: 4 << 20, console: () => {}, jit: engine === "jit" ? { threshold: 1 } : false });
    const last = () => m.ram.readU64(DATA);
    for (let n = 0; n < 50; n++) m.vcpu.runSlice(100);
    assert.equal(last(), 1n);
    if (m.jit) assert.ok(m.jit.stats().translatedInstructions > 1000, "the loop and the function run as translated code");

    // A driver with its rings elsewhere in RAM, whose data buffer is exactly
    // the function's page: the header takes the 16 bytes before it.
    const blk = new VirtioBlk(openDisk(join(dir, "code.img")), { name: "blk0", serial: "code" });
    const d = new TestDriver(blk, m.ram, { rings: RAM + 0x30_0000n, heap: FUNC - 16n });
    d.start(d.deviceFeatures(), 16);
    const header = new Uint8Array(16); // VIRTIO_BLK_T_IN, sector 0
    d.add(0, [{ data: header }, { writeLen: 512 }, { writeLen: 1 }]);
    d.kick(0);
    assert.equal(d.used(0).length, 1);
    assert.deepEqual([...m.ram.read(FUNC, 8)], [...sector.subarray(0, 8)], "the device wrote the new code");

    for (let n = 0; n < 5; n++) m.vcpu.runSlice(100);
    assert.equal(last(), 2n, "the guest runs the instructions the device wrote");
    if (m.jit) assert.ok(m.jit.stats().invalidations >= 1);

    m.ram.writeU64(DATA + 8n, 1n); // STOP
    assert.deepEqual(m.run(), { kind: "exit", code: 0 });
  });
}


function runToExit(img: ElfImage, jit: boolean) {
  const m = new BareMachine(img, { memBytes: 4 << 20, console: () => {}, jit: jit ? { threshold: 1 } : false });
  assert.deepEqual(m.run(), { kind: "exit", code: 0 });
  return { x: (r: number) => BigInt.asUintN(64, m.core.fn.getX(m.vcpu.hart, r)), jit: m.jit };
}

for (const engine of ["jit", "interpreter"] as const) {
  test(`${engine}: a guest that rewrites a function it keeps calling runs the new version after the store`, () => {
    // s1 = sum of f() over 200 calls; after call 100, f's `li a0, 1` becomes `li a0, 2`.
    const NEW = addi(10, 0, 2);
    const main = [
      addi(9, 0, 0), addi(18, 0, 0), addi(19, 0, 100), addi(20, 0, 200), // s1 = 0, s2 = calls, s3 = 100, s4 = 200
      lui(21, 0x80002), i(0x13, 21, 1, 21, 32), i(0x13, 21, 5, 21, 32), // s5 = FUNC
      lui(22, (NEW + 0x800) >>> 12), addi(22, 22, ((NEW & 0xfff) << 20) >> 20), // s6 = the new instruction
      jal(1, Number(FUNC - RAM) - 36), // loop (offset 36): call f
      i(0x33, 9, 0, 9, 0) | (10 << 20), // add s1, s1, a0
      addi(18, 18, 1),
      bne(18, 19, 12), // after call 100 only:
      s(2, 21, 22, 0), //   sw s6, 0(s5): rewrite f
      FENCE_I,
      bne(18, 20, -24), // loop while calls != 200
      ...exitWords(),
    ];
    const r = runToExit(image(main, [addi(10, 0, 1), ret()]), engine === "jit");
    assert.equal(r.x(9), 100n * 1n + 100n * 2n);
    if (r.jit) assert.ok(r.jit.stats().invalidations >= 1, "the store retired the function's translation");
  });

  test(`${engine}: a store that rewrites a later instruction of its own block takes effect at once`, () => {
    const NEW = addi(10, 0, 5); // replaces `li a0, 1` below
    const main = [
      i(0x17, 6, 0, 0, 0) & ~0xfff00000, // auipc x6, 0
      lui(7, (NEW + 0x800) >>> 12), addi(7, 7, ((NEW & 0xfff) << 20) >> 20),
      s(2, 6, 7, 20), // sw x7, 20(x6): the instruction at offset 20
      addi(0, 0, 0),
      addi(10, 0, 1), // offset 20
      ...exitWords(),
    ];
    const r = runToExit(image(main, [ret()]), engine === "jit");
    assert.equal(r.x(10), 5n);
  });
}
