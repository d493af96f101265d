// Bounds-checked access to a VM's guest-physical memory for the hypervisor
// (loaders now, device models later: DESIGN.md, "devices see guest memory only
// through a bounds-checked guest-memory accessor"). Every access is translated
// through the VM's p2m frame by frame, so a range that crosses pages lands in
// whatever host frames back them, and nothing outside the VM's RAM window can
// be named: such an access throws GuestMemoryError before touching anything.
//
// Writes follow the p2m's rules as a guest store does (p2m.ts): a frame not
// touched yet is allocated, a shared one is copied first, a compressed or
// swapped one comes back. Reads allocate nothing: untouched and zero pages
// read as zeros, compressed and swapped ones are read where they are. Each
// frame piece is one access (enterAccess/exitAccess): the memory manager
// never moves a page out from under a DMA in progress on another thread.

import type { GuestAddress } from "./address.js";
import { hex } from "./address.js";
import { FRAME_SIZE, type FramePoolHandle } from "./frame-pool.js";
import { P2m, P2mFault, type P2mHandle } from "./p2m.js";
import { readsAsZero } from "./p2m-entry.js";
import type { PageStoreHandle } from "./manager/page-store.js";

/** A VM's RAM as plain data, posted to another thread (an I/O thread) that
 *  works on it there: the pool and the p2m to attach, and the VM's page map
 *  of translated code (0: none), which that thread's writes must retire
 *  translations in, as DMA from this thread does (jit/code-page-map.ts). */
export interface SharedGuestMemory {
  readonly pool: FramePoolHandle;
  readonly p2m: P2mHandle;
  readonly codePageMap: number;
  /** The host's page store, where that thread finds compressed and swapped pages. */
  readonly pages?: PageStoreHandle;
}

/** An access outside guest RAM. A P2mFault, so one handler covers both. */
export class GuestMemoryError extends P2mFault {
  override readonly name = "GuestMemoryError";
  constructor(
    readonly address: GuestAddress,
    readonly length: number,
  ) {
    super(`guest-physical range ${hex(address)}+${length} is outside guest RAM`);
  }
}

const FRAME = BigInt(FRAME_SIZE);

export class GuestMemory {
  /** `memory` is accepted for callers that pass the pool's memory; the p2m's
   *  pool is what is used (it follows the memory when it grows). */
  constructor(
    private readonly p2m: P2m,
    _memory?: WebAssembly.Memory,
  ) {}

  /** Is [gpa, gpa + len) entirely guest RAM? */
  isRam(gpa: GuestAddress, len: number): boolean {
    if (len === 0) return this.p2m.contains(gpa);
    return this.p2m.containsRange(gpa, len);
  }

  read(gpa: GuestAddress, len: number): Uint8Array {
    this.check(gpa, len);
    const out = new Uint8Array(len);
    this.forEachPiece(gpa, len, (index, off, done, n) => this.p2m.readInto(index, off, n, out, done));
    return out;
  }

  write(gpa: GuestAddress, data: Uint8Array): void {
    this.forEachPiece(gpa, data.length, (index, off, done, n) => {
      const host = this.p2m.writableFrame(index) + off;
      this.p2m.pool.bytes.set(data.subarray(done, done + n), host);
      this.p2m.markDirty(index); // again, now the bytes are there (dirty-log.ts)
    });
    this.p2m.noteWritten(gpa, data.length);
  }

  /** Set `len` bytes to zero (pages that read as zero without a frame stay without one). */
  zero(gpa: GuestAddress, len: number): void {
    this.forEachPiece(gpa, len, (index, off, _done, n) => {
      if (readsAsZero(this.p2m.entry(index))) return;
      const host = this.p2m.writableFrame(index) + off;
      this.p2m.pool.bytes.fill(0, host, host + n);
      this.p2m.markDirty(index);
    });
    this.p2m.noteWritten(gpa, len);
  }

  readU16(gpa: GuestAddress): number {
    const b = this.read(gpa, 2);
    return b[0] | (b[1] << 8);
  }

  writeU16(gpa: GuestAddress, v: number): void {
    this.write(gpa, Uint8Array.of(v & 0xff, (v >>> 8) & 0xff));
  }

  readU32(gpa: GuestAddress): number {
    const b = this.read(gpa, 4);
    return new DataView(b.buffer).getUint32(0, true);
  }

  writeU32(gpa: GuestAddress, v: number): void {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, v >>> 0, true);
    this.write(gpa, b);
  }

  readU64(gpa: GuestAddress): bigint {
    return new DataView(this.read(gpa, 8).buffer).getBigUint64(0, true);
  }

  writeU64(gpa: GuestAddress, v: bigint): void {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, BigInt.asUintN(64, v), true);
    this.write(gpa, b);
  }

  private check(gpa: GuestAddress, len: number): void {
    if (!Number.isSafeInteger(len) || len < 0 || !this.isRam(gpa, len)) throw new GuestMemoryError(gpa, len);
  }

  /**
   * Walk [gpa, gpa + len) one frame piece at a time: `visit(index, off, done, n)`
   * gets the piece's window frame index, its offset in that frame, how many
   * bytes came before it, and its length; each visit is one access. The
   * whole range is checked first, so a bad access changes nothing.
   */
  private forEachPiece(gpa: GuestAddress, len: number, visit: (index: number, off: number, done: number, n: number) => void): void {
    this.check(gpa, len);
    let done = 0;
    while (done < len) {
      const at = gpa + BigInt(done);
      const off = Number(at % FRAME);
      const n = Math.min(FRAME_SIZE - off, len - done);
      this.p2m.enterAccess();
      try {
        visit(this.p2m.indexOf(at), off, done, n);
      } finally {
        this.p2m.exitAccess();
      }
      done += n;
    }
  }
}
