// Price of the frame pool's single-thread paths, the ones a boot takes: about
// 16,000 first-touch p2m faults, each one alloc() of one frame. Prints ns per
// operation, best of several rounds (the first rounds include V8 warming up).
//
//   node dist/bench/pool.js [frames per round, default 16000] [rounds, default 20]

import { FramePool, FRAME_SIZE } from "../src/memory/frame-pool.js";
import { P2m } from "../src/memory/p2m.js";

const frames = Number(process.argv[2] ?? 16000);
const rounds = Number(process.argv[3] ?? 20);
const RAM = 0x8000_0000n;

function best(name: string, run: () => number): void {
  let min = Infinity;
  for (let r = 0; r < rounds; r++) min = Math.min(min, run());
  console.log(`${name.padEnd(44)} ${(min / frames).toFixed(1).padStart(7)} ns`);
}

function timed(body: () => void): number {
  const t = process.hrtime.bigint();
  body();
  return Number(process.hrtime.bigint() - t);
}

// A fresh pool each round: frames come from the top and the memory grows.
best("alloc(), fresh frames (memory grows)", () => {
  const pool = new FramePool(1 << 16);
  return timed(() => {
    for (let i = 0; i < frames; i++) pool.alloc();
  });
});

// Frames freed before: they come back from the free list.
{
  const pool = new FramePool(1 << 16);
  const held = new Array<number>(frames);
  for (let i = 0; i < frames; i++) held[i] = pool.alloc();
  for (let i = 0; i < frames; i++) pool.free(held[i]);
  best("alloc(), reused frames", () => {
    const ns = timed(() => {
      for (let i = 0; i < frames; i++) held[i] = pool.alloc();
    });
    for (let i = 0; i < frames; i++) pool.free(held[i]);
    return ns;
  });
  best("free() (zeroes the frame)", () => {
    for (let i = 0; i < frames; i++) held[i] = pool.alloc();
    return timed(() => {
      for (let i = 0; i < frames; i++) pool.free(held[i]);
    });
  });
}

// The p2m fault path: populate() = read the entry, alloc(), publish the entry.
{
  const pool = new FramePool(1 << 16);
  best("p2m populate(), reused frames", () => {
    const p2m = new P2m(pool, RAM, frames * FRAME_SIZE);
    const ns = timed(() => {
      for (let i = 0; i < frames; i++) p2m.populate(i);
    });
    p2m.release();
    return ns;
  });
}
