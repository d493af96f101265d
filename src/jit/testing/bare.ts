// Test helpers shared by the JIT's tests: a seeded PRNG, and a bare-metal
// image made of byte blocks at guest-physical addresses (no ELF file needed).
import type { ElfImage } from "../../loader/elf.js";

/** mulberry32: small, fast, and the same sequence for the same seed everywhere. */
export class Rng {
  private a: number;
  constructor(seed: number) {
    this.a = seed >>> 0;
  }
  u32(): number {
    this.a = (this.a + 0x6d2b79f5) >>> 0;
    let t = this.a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  /** 0 .. n-1 */
  int(n: number): number {
    return this.u32() % n;
  }
  /** lo .. hi inclusive */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }
  chance(p: number): boolean {
    return this.u32() / 4294967296 < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }
  u64(): bigint {
    return (BigInt(this.u32()) << 32n) | BigInt(this.u32());
  }
}

/** An image entered at the first block's address, with HTIF `tohost` (16 zero
 *  bytes of its own) at `tohost`. */
export function bareImage(blocks: [address: bigint, bytes: Uint8Array][], tohost: bigint): ElfImage {
  return {
    entry: blocks[0][0],
    segments: [
      ...blocks.map(([at, data]) => ({ paddr: at, vaddr: at, data, memsz: BigInt(data.length) })),
      { paddr: tohost, vaddr: tohost, data: new Uint8Array(16), memsz: 16n },
    ],
    symbol: (name) => (name === "tohost" ? tohost : undefined),
  };
}
