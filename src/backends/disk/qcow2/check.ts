// `tsvisor disk check`: a qcow2 consistency checker (QEMU docs/interop/qcow2.txt:
// "Host cluster management", "Cluster mapping", "Snapshots").
//
// It counts, for every host cluster of the file, the references the metadata
// makes to it (header, L1 tables, L2 tables, data and compressed clusters,
// refcount table and blocks, snapshot table and snapshot L1 tables, bitmap
// directory, tables and data when the bitmaps are marked consistent) and
// compares them with the stored refcounts, as `qemu-img check` does:
//   stored < references   -> corruption (a cluster in use could be handed out again)
//   stored > references   -> leak (wasted space, no harm to data)
// References outside the file, misaligned offsets, reserved bits and "copied"
// flags (bit 63) that disagree with the refcount are corruptions too.
//
// The checker reads an untrusted file: every size is bounded, every offset
// checked, and the walk over L2 tables has a budget, so it ends on any input.

import { HostFile } from "../host-file.js";
import { DiskImageError } from "../types.js";
import { parseHeader, headerReadLength, type Qcow2Header } from "./header.js";
import { ClusterCache } from "./lru.js";
import {
  entryOffset, compressedDescriptor, hex, MAX_L1_BYTES, INCOMPAT_DIRTY, INCOMPAT_CORRUPT, AUTOCLEAR_BITMAPS,
  L1_RESERVED_HI, L1_RESERVED_LO, L2_COPIED_HI, L2_COMPRESSED_HI, L2_STD_RESERVED_HI, L2_STD_RESERVED_LO, L2_ZERO_LO,
} from "./format.js";

/** Most clusters a check will track (128 MiB each for the stored and the counted refcounts). */
const MAX_CHECK_CLUSTERS = 2 ** 25;
/** Most L2 tables a check will walk (snapshots can reference one table many times). */
const MAX_L2_VISITS = 1 << 20;
const MAX_MESSAGES = 50;

export interface CheckResult {
  path: string;
  version: number;
  clusterSize: number;
  corruptions: number;
  leaks: number;
  /** The first problems found, one line each. */
  messages: string[];
  /** Problems not listed in `messages`. */
  moreMessages: number;
  /** Guest clusters the active L1 table maps to data (normal or compressed). */
  allocatedClusters: number;
  compressedClusters: number;
  /** Guest clusters of the virtual disk. */
  totalClusters: number;
  /** Offset just past the last cluster in use. */
  imageEndOffset: number;
  dirty: boolean;
  markedCorrupt: boolean;
}

export function checkQcow2(path: string): CheckResult {
  const file = HostFile.open(path, true);
  try {
    return new Checker(path, file).run();
  } finally {
    file.close();
  }
}

class Checker {
  private readonly h: Qcow2Header;
  private readonly cs: number;
  private readonly nb: number;
  private readonly refs: Uint32Array;
  private readonly stored: Uint32Array;
  private readonly res: CheckResult;
  private readonly l2Cache: ClusterCache;
  private l2Visits = 0;

  constructor(private readonly path: string, private readonly file: HostFile) {
    const start = new Uint8Array(Math.min(file.size, 112));
    file.pread(start, 0);
    const first = new Uint8Array(Math.max(headerReadLength(start, file.size), start.length));
    file.pread(first, 0);
    this.h = parseHeader(path, first, file.size, { forCheck: true });
    this.cs = 2 ** this.h.cluster_bits;
    this.nb = Math.ceil(file.size / this.cs);
    if (this.nb > MAX_CHECK_CLUSTERS) throw new DiskImageError(`${path}: too large to check (${this.nb} clusters)`);
    this.refs = new Uint32Array(this.nb);
    this.stored = new Uint32Array(this.nb); // saturating at 2^32 - 1, like refs
    this.l2Cache = ClusterCache.forBudget(4 << 20, this.cs);
    this.res = {
      path,
      version: this.h.version,
      clusterSize: this.cs,
      corruptions: 0,
      leaks: 0,
      messages: [],
      moreMessages: 0,
      allocatedClusters: 0,
      compressedClusters: 0,
      totalClusters: Math.ceil(this.h.size / this.cs),
      imageEndOffset: 0,
      dirty: (this.h.incompatible_features & INCOMPAT_DIRTY) !== 0n,
      markedCorrupt: (this.h.incompatible_features & INCOMPAT_CORRUPT) !== 0n,
    };
  }

  private say(msg: string): void {
    if (this.res.messages.length < MAX_MESSAGES) this.res.messages.push(msg);
    else this.res.moreMessages++;
  }

  private corrupt(msg: string): void {
    this.res.corruptions++;
    this.say(`ERROR ${msg}`);
  }

  /** Counts one reference to every cluster overlapping [offset, offset + length). */
  private inc(offset: number, length: number, what: string): void {
    if (length <= 0) return;
    const first = Math.floor(offset / this.cs);
    const last = Math.floor((offset + length - 1) / this.cs);
    if (last >= this.nb) {
      this.corrupt(`${what} at ${hex(offset)} is outside the file`);
      return;
    }
    for (let c = first; c <= last; c++) if (this.refs[c] < 0xffff_ffff) this.refs[c]++;
  }

  run(): CheckResult {
    const h = this.h;
    this.inc(0, this.cs, "header");
    this.loadStoredRefcounts();
    this.inc(h.l1_table_offset, h.l1_size * 8, "L1 table");
    this.walkL1(h.l1_table_offset, h.l1_size, true);
    this.walkSnapshots();
    this.walkBitmaps();
    this.compare();
    return this.res;
  }

  /** Reads the refcount table and blocks into `stored`, counting their own clusters. */
  private loadStoredRefcounts(): void {
    const h = this.h;
    const cs = this.cs;
    const bits = 2 ** h.refcount_order;
    const epb = (cs * 8) / bits;
    const table = new Uint8Array(h.refcount_table_clusters * cs);
    this.file.readExact(table, h.refcount_table_offset, "refcount table");
    this.inc(h.refcount_table_offset, table.length, "refcount table");
    const tv = new DataView(table.buffer);
    const block = new Uint8Array(cs);
    const bv = new DataView(block.buffer);
    for (let t = 0; t < table.length / 8; t++) {
      const hi = tv.getUint32(8 * t);
      const lo = tv.getUint32(8 * t + 4);
      if ((hi & 0xff00_0000) !== 0 || (lo & 0x1ff) !== 0) {
        this.corrupt(`refcount table entry ${t} has reserved bits set`);
        continue;
      }
      const off = entryOffset(hi, lo);
      if (off === 0) continue;
      if (off % cs !== 0) {
        this.corrupt(`refcount block ${t} at ${hex(off)} is not cluster-aligned`);
        continue;
      }
      if (off + cs > this.file.size) {
        this.corrupt(`refcount block ${t} at ${hex(off)} is outside the file`);
        continue;
      }
      this.inc(off, cs, `refcount block ${t}`);
      if (t * epb >= this.nb) continue; // describes only clusters past the end of the file
      this.file.readExact(block, off, "refcount block");
      const end = Math.min(epb, this.nb - t * epb);
      for (let i = 0; i < end; i++) {
        let r: number;
        if (bits === 64) {
          const vhi = bv.getUint32(8 * i);
          r = vhi >= 0x20_0000 ? Number.MAX_SAFE_INTEGER : vhi * 0x1_0000_0000 + bv.getUint32(8 * i + 4);
        } else if (bits === 32) r = bv.getUint32(4 * i);
        else if (bits === 16) r = bv.getUint16(2 * i);
        else if (bits === 8) r = block[i];
        else {
          const bit = i * bits;
          r = (block[bit >> 3] >> (bit & 7)) & ((1 << bits) - 1);
        }
        this.stored[t * epb + i] = Math.min(r, 0xffff_ffff);
      }
    }
  }

  private readL2(off: number): Uint8Array {
    let t = this.l2Cache.get(off);
    if (!t) {
      t = new Uint8Array(this.cs);
      this.file.readExact(t, off, "L2 table");
      this.l2Cache.set(off, t);
    }
    return t;
  }

  private walkL1(l1Offset: number, l1Size: number, active: boolean): void {
    const cs = this.cs;
    const l1 = new Uint8Array(l1Size * 8);
    this.file.readExact(l1, l1Offset, "L1 table");
    const v = new DataView(l1.buffer);
    const where = active ? "" : " (snapshot)";
    for (let i = 0; i < l1Size; i++) {
      const hi = v.getUint32(8 * i);
      const lo = v.getUint32(8 * i + 4);
      if ((hi & L1_RESERVED_HI) !== 0 || (lo & L1_RESERVED_LO) !== 0) {
        this.corrupt(`L1 entry ${i}${where} has reserved bits set`);
        continue;
      }
      const off = entryOffset(hi, lo);
      if (off === 0) continue;
      if (off % cs !== 0) {
        this.corrupt(`L2 table ${hex(off)} (L1 index ${i}${where}) is not cluster-aligned`);
        continue;
      }
      if (off + cs > this.file.size) {
        this.corrupt(`L2 table ${hex(off)} (L1 index ${i}${where}) is outside the file`);
        continue;
      }
      this.inc(off, cs, "L2 table");
      if (active && ((hi & L2_COPIED_HI) !== 0) !== (this.stored[off / cs] === 1)) {
        this.corrupt(`OFLAG_COPIED L2 table: L1 index ${i}, offset ${hex(off)}, refcount=${this.stored[off / cs]}`);
      }
      if (++this.l2Visits > MAX_L2_VISITS) throw new DiskImageError(`${this.path}: too many L2 table references to check`);
      this.walkL2(this.readL2(off), i, active, where);
    }
  }

  private walkL2(table: Uint8Array, l1Index: number, active: boolean, where: string): void {
    const cs = this.cs;
    const v = new DataView(table.buffer, table.byteOffset, table.byteLength);
    const entries = cs / 8;
    for (let e = 0; e < entries; e++) {
      const hi = v.getUint32(8 * e);
      const lo = v.getUint32(8 * e + 4);
      if (hi === 0 && lo === 0) continue;
      const guest = hex((l1Index * entries + e) * cs);
      if (hi & L2_COMPRESSED_HI) {
        const { offset, sectors } = compressedDescriptor(hi, lo, this.h.cluster_bits);
        if (offset >= this.file.size) {
          this.corrupt(`compressed cluster for guest offset ${guest}${where} at ${hex(offset)} is outside the file`);
          continue;
        }
        const start = offset - (offset % 512);
        // The last sectors may lie past the end of the file, when the image ends with them.
        this.inc(start, Math.min(sectors * 512, this.nb * cs - start), "compressed cluster");
        if (active) {
          this.res.allocatedClusters++;
          this.res.compressedClusters++;
        }
        continue;
      }
      if ((hi & L2_STD_RESERVED_HI) !== 0 || (lo & L2_STD_RESERVED_LO) !== 0) {
        this.corrupt(`L2 entry for guest offset ${guest}${where} has reserved bits set`);
        continue;
      }
      const off = entryOffset(hi, lo);
      const zero = (lo & L2_ZERO_LO) !== 0;
      if (off === 0) {
        if ((hi & L2_COPIED_HI) !== 0 && !zero) this.corrupt(`L2 entry for guest offset ${guest}${where} has the copied flag but no cluster`);
        continue;
      }
      if (off % cs !== 0) {
        this.corrupt(`data cluster for guest offset ${guest}${where} at ${hex(off)} is not cluster-aligned`);
        continue;
      }
      if (off >= this.file.size) {
        this.corrupt(`data cluster for guest offset ${guest}${where} at ${hex(off)} is outside the file`);
        continue;
      }
      this.inc(off, cs, "data cluster");
      if (active) {
        if (!zero) this.res.allocatedClusters++;
        if (((hi & L2_COPIED_HI) !== 0) !== (this.stored[off / cs] === 1)) {
          this.corrupt(`OFLAG_COPIED data cluster: guest offset ${guest}, host ${hex(off)}, refcount=${this.stored[off / cs]}`);
        }
      }
    }
  }

  /** The snapshot table ("Snapshots"): its own clusters and each snapshot's L1 table. */
  private walkSnapshots(): void {
    const h = this.h;
    if (h.nb_snapshots === 0) return;
    const cs = this.cs;
    let at = h.snapshots_offset;
    const fixed = new Uint8Array(40);
    const fv = new DataView(fixed.buffer);
    for (let s = 0; s < h.nb_snapshots; s++) {
      this.file.readExact(fixed, at, "snapshot table entry");
      const l1Offset = Number(fv.getBigUint64(0) & 0xff_ffff_ffff_ffffn);
      const l1Size = fv.getUint32(8);
      const idLen = fv.getUint16(12);
      const nameLen = fv.getUint16(14);
      const extra = fv.getUint32(36);
      if (extra > 1 << 16) throw new DiskImageError(`${this.path}: snapshot ${s} has ${extra} bytes of extra data (corrupt)`);
      at += 40 + extra + idLen + nameLen;
      at = Math.ceil(at / 8) * 8;
      if (at > this.file.size) throw new DiskImageError(`${this.path}: the snapshot table runs past the end of the file`);
      if (l1Offset % cs !== 0 || l1Size * 8 > MAX_L1_BYTES || l1Offset + l1Size * 8 > this.file.size || (l1Size > 0 && l1Offset === 0)) {
        this.corrupt(`snapshot ${s}: L1 table at ${hex(l1Offset)} (${l1Size} entries) is invalid`);
        continue;
      }
      this.inc(l1Offset, l1Size * 8, "snapshot L1 table");
      this.walkL1(l1Offset, l1Size, false);
    }
    this.inc(h.snapshots_offset, at - h.snapshots_offset, "snapshot table");
  }

  /** Persistent bitmaps ("Bitmaps extension", "Bitmap directory", "Bitmap
   *  table"), counted only while the autoclear bit says they are consistent,
   *  as qemu-img does. */
  private walkBitmaps(): void {
    const h = this.h;
    const b = h.bitmaps;
    if (!b || (h.autoclear_features & AUTOCLEAR_BITMAPS) === 0n || b.nb_bitmaps === 0) return;
    const cs = this.cs;
    const dirOffset = b.bitmap_directory_offset;
    const dirSize = b.bitmap_directory_size;
    if (dirOffset % cs !== 0 || dirSize > 64 << 20 || dirOffset + dirSize > this.file.size || b.nb_bitmaps > 65535) {
      this.corrupt(`bitmap directory at ${hex(dirOffset)} (${dirSize} bytes) is invalid`);
      return;
    }
    this.inc(dirOffset, dirSize, "bitmap directory");
    const dir = new Uint8Array(dirSize);
    this.file.readExact(dir, dirOffset, "bitmap directory");
    const dv = new DataView(dir.buffer);
    let at = 0;
    for (let i = 0; i < b.nb_bitmaps; i++) {
      if (at + 24 > dirSize) {
        this.corrupt(`bitmap directory entry ${i} runs past the directory`);
        return;
      }
      const tableOffset = Number(dv.getBigUint64(at) & 0xff_ffff_ffff_ffffn);
      const tableSize = dv.getUint32(at + 8);
      at += Math.ceil((24 + dv.getUint32(at + 20) + dv.getUint16(at + 18)) / 8) * 8;
      if (tableOffset % cs !== 0 || tableSize * 8 > 64 << 20 || tableOffset + tableSize * 8 > this.file.size) {
        this.corrupt(`bitmap ${i}: table at ${hex(tableOffset)} (${tableSize} entries) is invalid`);
        continue;
      }
      this.inc(tableOffset, tableSize * 8, "bitmap table");
      const table = new Uint8Array(tableSize * 8);
      this.file.readExact(table, tableOffset, "bitmap table");
      const tv = new DataView(table.buffer);
      for (let e = 0; e < tableSize; e++) {
        const off = entryOffset(tv.getUint32(8 * e), tv.getUint32(8 * e + 4));
        if (off === 0) continue;
        if (off % cs !== 0 || off + cs > this.file.size) {
          this.corrupt(`bitmap ${i}: data cluster ${hex(off)} is invalid`);
          continue;
        }
        this.inc(off, cs, "bitmap data");
      }
    }
  }

  private compare(): void {
    const cs = this.cs;
    let end = 0;
    for (let c = 0; c < this.nb; c++) {
      const stored = this.stored[c];
      const refs = this.refs[c];
      if (stored !== 0 || refs !== 0) end = (c + 1) * cs;
      if (stored === refs) continue;
      if (stored < refs) {
        this.corrupt(`cluster ${hex(c * cs)} refcount=${stored} reference=${refs}`);
      } else {
        this.res.leaks++;
        this.say(`Leaked cluster ${hex(c * cs)} refcount=${stored} reference=${refs}`);
      }
    }
    this.res.imageEndOffset = end;
  }
}

/** The summary `tsvisor disk check` prints (worded as qemu-img's). */
export function formatCheck(r: CheckResult): string {
  const lines = [...r.messages];
  if (r.moreMessages > 0) lines.push(`(${r.moreMessages} more)`);
  if (lines.length > 0) lines.push("");
  if (r.markedCorrupt) lines.push("The image is marked corrupt (incompatible feature bit 1).");
  if (r.dirty) lines.push("The image has the dirty bit set.");
  if (r.corruptions === 0 && r.leaks === 0) lines.push("No errors were found on the image.");
  if (r.corruptions > 0) {
    lines.push(`${r.corruptions} errors were found on the image.`, "Data may be corrupted, or further writes to the image may corrupt it.");
  }
  if (r.leaks > 0) lines.push(`${r.leaks} leaked clusters were found on the image.`, "This means waste of disk space, but no harm to data.");
  const pct = (n: number) => (r.totalClusters > 0 ? ((100 * n) / r.totalClusters).toFixed(2) : "0.00");
  lines.push(`${r.allocatedClusters}/${r.totalClusters} = ${pct(r.allocatedClusters)}% allocated, ${pct(r.compressedClusters)}% compressed clusters`);
  lines.push(`Image end offset: ${r.imageEndOffset}`);
  return lines.join("\n") + "\n";
}
