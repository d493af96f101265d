// Code written by a device: a guest keeps calling a function that binary
// translation has already compiled; a virtio-blk read then DMAs new
// instructions over it (through the same bounds-checked guest-memory accessor
// every device uses). The guest must run the new code from the next call on.
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
  const main = words([
    lui(5, 0x80100), i(0x13, 5, 1, 5, 32), i(0x13, 5, 5, 5, 32), // x5 = DATA (zero-extended)
    jal(1, Number(FUNC - RAM) - 12), // loop: call f
    s(3, 5, 10, 0), // sd a0, LAST
    i(0x03, 7, 3, 5, 8), // ld x7, STOP
    beq(7, 0, -12),
    lui(6, 0x80200), i(0x13, 6, 1, 6, 32), i(0x13, 6, 5, 6, 32), addi(7, 0, 1), s(3, 6, 7, 0), // tohost = 1
    jal(0, 0),
  ]);
  const f = words([addi(10, 0, 1), ret()]);
  return {
    entry: RAM,
    segments: [
      { paddr: RAM, vaddr: RAM, data: main, memsz: BigInt(main.length) },
      { paddr: FUNC, vaddr: FUNC, data: f, memsz: BigInt(f.length) },
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
