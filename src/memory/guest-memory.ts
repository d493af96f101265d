// Bounds-checked access to a VM's guest-physical memory for the hypervisor
// (loaders now, device models later). Every access is translated through the
// p2m frame by frame; nothing outside the VM's RAM window can be named.

import { P2m, P2mFault } from "./p2m.js";
import { FRAME_SIZE } from "./frame-pool.js";

export class GuestMemory {
  constructor(private readonly p2m: P2m, private readonly memory: WebAssembly.Memory) {}

  /** Is [gpa, gpa+len) entirely guest RAM? */
  isRam(gpa: bigint, len: number): boolean {
    if (len === 0) return this.p2m.contains(gpa);
    return this.p2m.contains(gpa) && this.p2m.contains(gpa + BigInt(len - 1));
  }

  write(gpa: bigint, data: Uint8Array): void {
    this.check(gpa, data.length);
    let done = 0;
    while (done < data.length) {
      const at = gpa + BigInt(done);
      const off = Number(at % BigInt(FRAME_SIZE));
      const n = Math.min(FRAME_SIZE - off, data.length - done);
      new Uint8Array(this.memory.buffer, this.p2m.hostFrame(at) + off, n).set(data.subarray(done, done + n));
      done += n;
    }
  }

  read(gpa: bigint, len: number): Uint8Array {
    this.check(gpa, len);
    const out = new Uint8Array(len);
    let done = 0;
    while (done < len) {
      const at = gpa + BigInt(done);
      const off = Number(at % BigInt(FRAME_SIZE));
      const n = Math.min(FRAME_SIZE - off, len - done);
      out.set(new Uint8Array(this.memory.buffer, this.p2m.hostFrame(at) + off, n), done);
      done += n;
    }
    return out;
  }

  readU64(gpa: bigint): bigint {
    return new DataView(this.read(gpa, 8).buffer).getBigUint64(0, true);
  }

  writeU64(gpa: bigint, v: bigint): void {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, BigInt.asUintN(64, v), true);
    this.write(gpa, b);
  }

  private check(gpa: bigint, len: number): void {
    if (len < 0 || !this.isRam(gpa, len)) {
      throw new P2mFault(`guest-physical range 0x${gpa.toString(16)}+${len} is outside guest RAM`);
    }
  }
}
