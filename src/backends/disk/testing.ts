// Helpers for the disk image tests: a seeded random generator, a plain
// in-memory model of a disk to compare images against, random workloads, and
// whether qemu-img is installed.

import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { DiskImage } from "./types.js";

/** mulberry32: small, seeded, reproducible. */
export function rng(seed: number): { next(): number; int(n: number): number; bytes(n: number): Uint8Array } {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    int: (n: number) => Math.floor(next() * n),
    bytes: (n: number) => {
      const b = new Uint8Array(n);
      for (let i = 0; i < n; i += 4) {
        const x = (next() * 4294967296) >>> 0;
        b[i] = x;
        if (i + 1 < n) b[i + 1] = x >>> 8;
        if (i + 2 < n) b[i + 2] = x >>> 16;
        if (i + 3 < n) b[i + 3] = x >>> 24;
      }
      return b;
    },
  };
}

export function tempDir(prefix: string): { dir: string; path(name: string): string; remove(): void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, path: (name) => join(dir, name), remove: () => rmSync(dir, { recursive: true, force: true }) };
}

let qemuImg: boolean | undefined;
export function haveQemuImg(): boolean {
  if (qemuImg === undefined) qemuImg = spawnSync("qemu-img", ["--version"], { stdio: "ignore" }).status === 0;
  return qemuImg;
}
export function haveQemuIo(): boolean {
  return spawnSync("qemu-io", ["--version"], { stdio: "ignore" }).status === 0;
}
export const NO_QEMU = "qemu-img is not installed (Debian's qemu-utils; `npm test` installs it)";

/** Runs a command, throws with its stderr when it fails. */
export function run(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")}: status ${r.status}: ${r.stderr}`);
  return r.stdout;
}

/** The guest's view of a disk, kept in memory. */
export class Model {
  readonly bytes: Uint8Array;
  constructor(size: number, initial?: Uint8Array) {
    this.bytes = new Uint8Array(size);
    if (initial) this.bytes.set(initial.subarray(0, size));
  }
  write(offset: number, data: Uint8Array): void {
    this.bytes.set(data, offset);
  }
  zero(offset: number, length: number): void {
    this.bytes.fill(0, offset, offset + length);
  }
}

export interface Workload {
  ops: number;
  /** Largest request. */
  maxLength: number;
  /** Chance that an operation is a write-zeroes or a discard. */
  zeroChance?: number;
  /** Discard does not promise zeros (v2 overlays): leave discard out. */
  noDiscard?: boolean;
}

/** Random writes, write-zeroes and discards on `disk` and `model`, sometimes
 *  cluster-aligned, sometimes not, often near each other. */
export function randomOps(disk: DiskImage, model: Model, r: ReturnType<typeof rng>, w: Workload): void {
  const size = disk.virtualSize;
  let hot = r.int(size);
  for (let i = 0; i < w.ops; i++) {
    const len = 1 + r.int(Math.min(w.maxLength, size));
    let off = r.next() < 0.5 ? hot + r.int(4 * w.maxLength) - 2 * w.maxLength : r.int(size);
    if (r.next() < 0.3) off -= off % 4096;
    off = Math.max(0, Math.min(size - len, off));
    hot = off;
    const p = r.next();
    if (p < (w.zeroChance ?? 0.15)) {
      if (w.noDiscard || r.next() < 0.5) disk.writeZeroes(off, len, r.next() < 0.5);
      else disk.discard(off, len);
      model.zero(off, len);
    } else {
      const data = r.next() < 0.1 ? new Uint8Array(len) : r.bytes(len);
      disk.write(off, data);
      model.write(off, data);
    }
  }
}

/** Throws unless `disk` reads back exactly `model` (compared in 1 MiB pieces). */
export function assertSame(disk: DiskImage, model: Model): void {
  const piece = new Uint8Array(1 << 20);
  for (let off = 0; off < model.bytes.length; off += piece.length) {
    const n = Math.min(piece.length, model.bytes.length - off);
    const got = piece.subarray(0, n);
    disk.read(off, got);
    const want = model.bytes.subarray(off, off + n);
    for (let i = 0; i < n; i++) {
      if (got[i] !== want[i]) throw new Error(`byte ${off + i} (0x${(off + i).toString(16)}) is ${got[i]}, expected ${want[i]}`);
    }
  }
}

/** One operation of the crash test's workload (crash-child.ts runs them, the test replays them). */
export type CrashOp =
  | { kind: "write"; offset: number; data: Uint8Array }
  | { kind: "zero"; offset: number; length: number; mayUnmap: boolean }
  | { kind: "discard"; offset: number; length: number }
  | { kind: "flush" };

/** The endless operation sequence of a crash-test round: mostly small
 *  allocating writes (so a kill often lands between metadata updates), some
 *  zeroing and discards, a flush every few operations. */
export function* crashOps(seed: number, size: number): Generator<CrashOp> {
  const r = rng(seed);
  for (let i = 1; ; i++) {
    if (i % 8 === 0) {
      yield { kind: "flush" };
      continue;
    }
    const len = 1 + r.int(r.next() < 0.8 ? 6000 : 200000);
    const offset = r.int(size - len + 1);
    const p = r.next();
    if (p < 0.1) yield { kind: "zero", offset, length: len, mayUnmap: r.next() < 0.5 };
    else if (p < 0.2) yield { kind: "discard", offset, length: len };
    else yield { kind: "write", offset, data: r.bytes(len) };
  }
}
