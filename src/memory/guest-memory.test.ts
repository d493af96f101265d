import { test } from "node:test";
import assert from "node:assert/strict";
import { FramePool, FRAME_SIZE } from "./frame-pool.js";
import { P2m, P2mFault } from "./p2m.js";
import { GuestMemory, GuestMemoryError } from "./guest-memory.js";

const RAM = 0x8000_0000n;

function setup(frames = 8) {
  const pool = new FramePool(1 << 16);
  const p2m = new P2m(pool, RAM, frames * FRAME_SIZE);
  return { pool, p2m, mem: new GuestMemory(p2m, pool.memory) };
}

test("bytes written across a page boundary read back, through separate host frames", () => {
  const { p2m, mem, pool } = setup();
  const data = Uint8Array.from({ length: 100 }, (_, i) => i + 1);
  mem.write(RAM + 0x1000n - 50n, data);
  assert.deepEqual(mem.read(RAM + 0x1000n - 50n, 100), data);
  const f0 = p2m.frameAt(0)!;
  const f1 = p2m.frameAt(1)!;
  assert.equal(pool.bytes[f0 + FRAME_SIZE - 1], 50);
  assert.equal(pool.bytes[f1], 51);
});

test("u32 and u64 accessors are little-endian", () => {
  const { mem } = setup();
  mem.writeU64(RAM + 8n, 0x1122_3344_5566_7788n);
  assert.equal(mem.readU32(RAM + 8n), 0x5566_7788);
  assert.equal(mem.readU64(RAM + 8n), 0x1122_3344_5566_7788n);
  mem.writeU64(RAM + 16n, -1n);
  assert.equal(mem.readU64(RAM + 16n), 0xffff_ffff_ffff_ffffn);
});

test("reading untouched RAM gives zeros without allocating it", () => {
  const { mem, p2m } = setup();
  assert.deepEqual(mem.read(RAM + 0x2000n, 16), new Uint8Array(16));
  mem.zero(RAM + 0x3000n, 4096);
  assert.equal(p2m.populated, 0);
});

test("accesses outside RAM throw a typed error and change nothing", () => {
  const { mem, p2m } = setup(2);
  const end = RAM + 2n * 4096n;
  assert.throws(() => mem.read(RAM - 1n, 2), GuestMemoryError);
  assert.throws(() => mem.read(end - 4n, 8), GuestMemoryError);
  assert.throws(() => mem.write(end - 4n, new Uint8Array(8)), P2mFault);
  assert.throws(() => mem.readU64(0n), /0x0\+8 is outside guest RAM/);
  assert.throws(() => mem.read(RAM, -1), GuestMemoryError);
  assert.equal(p2m.populated, 0, "the partly valid write allocated nothing");
  assert.equal(mem.isRam(end - 8n, 8), true);
  assert.equal(mem.isRam(end - 8n, 9), false);
});
