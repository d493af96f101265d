// A qcow2 image (versions 2 and 3) as a DiskImage: guest reads and writes
// through the L1/L2 tables, cluster allocation through the refcounts, backing
// files, zero clusters, compressed clusters (QEMU docs/interop/qcow2.txt:
// "Cluster mapping", "Host cluster management", "Header").
//
//   l2_entries = cluster_size / 8
//   l1_index = (offset / cluster_size) / l2_entries
//   l2_index = (offset / cluster_size) % l2_entries
//
// Metadata is written through to the file in an order that keeps the image
// consistent at every moment (see refcount.ts): a new cluster's refcount is
// raised before anything points to it; its data is written before the L2
// entry that points to it; a new L2 table is written before the L1 entry; an
// old cluster's refcount drops only after the entry that pointed to it is
// gone. A killed tsvisor leaves at most leaked clusters; so does a power loss,
// as dependent steps are separated by fsync barriers (batched in
// cache=writeback, see refcount.ts). Nothing is lazy: the dirty bit is never used.
//
// Every offset read from the file is checked (aligned, inside the file, no
// reserved bits) before it is used; L2 tables and refcount blocks live in
// bounded LRU caches; the L1 and refcount tables are bounded by QEMU's limits
// (header.ts).

import { dirname, isAbsolute, resolve } from "node:path";
import { inflateRawSync } from "node:zlib";
import { HostFile } from "../host-file.js";
import { DiskImageError, checkRange, type CacheMode, type DiskImage } from "../types.js";
import { parseHeader, headerReadLength, HEADER_AUTOCLEAR_AT, type Qcow2Header } from "./header.js";
import { Refcounts } from "./refcount.js";
import { ClusterCache } from "./lru.js";
import {
  entryOffset, putEntry, compressedDescriptor, hex, type ClusterKind,
  L1_RESERVED_HI, L1_RESERVED_LO, L2_COPIED_HI, L2_COMPRESSED_HI, L2_STD_RESERVED_HI, L2_STD_RESERVED_LO, L2_ZERO_LO,
} from "./format.js";

const L2_CACHE_BYTES = 8 << 20;
/** Largest run of clusters one allocating write handles at once. */
const MAX_ALLOC_RUN_BYTES = 8 << 20;

export type BackingOpener = (path: string, format: "raw" | "qcow2" | undefined) => DiskImage;

export interface Qcow2OpenOptions {
  readOnly: boolean;
  cache: CacheMode;
  /** Opens the backing file (read-only); given by openDisk, which tracks the chain. */
  openBacking: BackingOpener;
}

interface L2Ref {
  offset: number;
  table: Uint8Array;
  view: DataView;
}

export class Qcow2Image implements DiskImage {
  readonly format = "qcow2" as const;
  readonly virtualSize: number;
  readonly readOnly: boolean;
  readonly header: Qcow2Header;
  readonly clusterSize: number;
  /** The backing image and the path it was opened from, when there is one. */
  readonly backing?: DiskImage;
  readonly backingPath?: string;
  private readonly file: HostFile;
  private readonly cache: CacheMode;
  private readonly l2Entries: number;
  private readonly l1: Uint8Array;
  private readonly l1View: DataView;
  private readonly l2Cache: ClusterCache;
  private readonly refcounts?: Refcounts;
  private lastCompressed?: { offset: number; data: Uint8Array };
  private closed = false;

  static open(path: string, opts: Qcow2OpenOptions): Qcow2Image {
    const file = HostFile.open(path, opts.readOnly);
    try {
      return new Qcow2Image(path, file, opts);
    } catch (e) {
      file.close();
      throw e;
    }
  }

  private constructor(readonly path: string, file: HostFile, opts: Qcow2OpenOptions) {
    this.file = file;
    this.readOnly = opts.readOnly;
    this.cache = opts.cache;
    const start = new Uint8Array(Math.min(file.size, 112));
    file.pread(start, 0);
    const first = new Uint8Array(Math.max(headerReadLength(start, file.size), start.length));
    file.pread(first, 0);
    const h = parseHeader(path, first, file.size);
    this.header = h;
    this.clusterSize = 2 ** h.cluster_bits;
    this.l2Entries = this.clusterSize / 8;
    this.virtualSize = h.size;
    if (!this.readOnly && h.nb_snapshots > 0) {
      throw new DiskImageError(
        `${path}: has ${h.nb_snapshots} internal snapshot(s); tsvisor writes only images without them (open it read-only, or delete them with 'qemu-img snapshot -d')`,
      );
    }
    this.l1 = new Uint8Array(h.l1_size * 8);
    file.readExact(this.l1, h.l1_table_offset, "L1 table");
    this.l1View = new DataView(this.l1.buffer);
    this.l2Cache = ClusterCache.forBudget(L2_CACHE_BYTES, this.clusterSize);
    if (!this.readOnly) {
      this.refcounts = new Refcounts(file, h.cluster_bits, h.refcount_order, h.refcount_table_offset, h.refcount_table_clusters,
        () => this.barrier(), this.cache === "writeback");
      // Autoclear features describe data tsvisor does not keep up to date
      // (bitmaps): clear them before the first change, as the spec requires.
      if (h.version === 3 && h.autoclear_features !== 0n) {
        file.pwrite(new Uint8Array(8), HEADER_AUTOCLEAR_AT);
        h.autoclear_features = 0n;
      }
    }
    if (h.backingFile !== undefined) {
      const name = h.backingFile.startsWith("file:") ? h.backingFile.slice(5) : h.backingFile;
      if (/^[a-z][a-z0-9+.-]*:(\/\/|\{)/i.test(name)) throw new DiskImageError(`${path}: backing file '${name}' uses a protocol tsvisor does not support`);
      let format: "raw" | "qcow2" | undefined;
      if (h.backingFormat !== undefined) {
        if (h.backingFormat !== "raw" && h.backingFormat !== "qcow2") {
          throw new DiskImageError(`${path}: backing file format '${h.backingFormat}' is not supported (raw and qcow2 are)`);
        }
        format = h.backingFormat;
      }
      this.backingPath = isAbsolute(name) ? name : resolve(dirname(path), name);
      this.backing = opts.openBacking(this.backingPath, format);
    }
  }

  get refcountBits(): number {
    return 2 ** this.header.refcount_order;
  }

  // ---- reading ------------------------------------------------------------

  read(offset: number, into: Uint8Array): void {
    this.checkOpen();
    checkRange(this.path, this.virtualSize, offset, into.length);
    this.readRange(offset, into);
  }

  /** Reads guest bytes from `offset` (no range check: also the tail of the last cluster). */
  private readRange(offset: number, into: Uint8Array): void {
    const cs = this.clusterSize;
    // A run of normal clusters that are contiguous on the host is one read.
    let runHost = 0;
    let runAt = 0;
    let runLen = 0;
    const flushRun = () => {
      if (runLen > 0) this.file.readZeroPadded(into.subarray(runAt, runAt + runLen), runHost);
      runLen = 0;
    };
    let pos = 0;
    while (pos < into.length) {
      const v = offset + pos;
      const ci = Math.floor(v / cs);
      const inC = v - ci * cs;
      const n = Math.min(cs - inC, into.length - pos);
      const k = this.lookup(ci);
      if (k.kind === "normal") {
        if (runLen > 0 && runHost + runLen === k.offset + inC) {
          runLen += n;
        } else {
          flushRun();
          runHost = k.offset + inC;
          runAt = pos;
          runLen = n;
        }
      } else {
        flushRun();
        const dst = into.subarray(pos, pos + n);
        if (k.kind === "unallocated") this.readBacking(v, dst);
        else if (k.kind === "zero") dst.fill(0);
        else dst.set(this.decompress(k.offset, k.length).subarray(inC, inC + n));
      }
      pos += n;
    }
    flushRun();
  }

  private readBacking(v: number, dst: Uint8Array): void {
    const b = this.backing;
    if (!b || v >= b.virtualSize) {
      dst.fill(0);
      return;
    }
    const m = Math.min(dst.length, b.virtualSize - v);
    b.read(v, dst.subarray(0, m));
    if (m < dst.length) dst.fill(0, m);
  }

  private decompress(offset: number, length: number): Uint8Array {
    if (this.lastCompressed?.offset === offset) return this.lastCompressed.data;
    const input = new Uint8Array(length);
    const got = this.file.pread(input, offset);
    let out: Buffer;
    try {
      out = inflateRawSync(input.subarray(0, got), { maxOutputLength: this.clusterSize });
    } catch {
      throw new DiskImageError(`${this.path}: compressed cluster at ${hex(offset)} is damaged`);
    }
    if (out.length !== this.clusterSize) throw new DiskImageError(`${this.path}: compressed cluster at ${hex(offset)} is damaged (short)`);
    const data = new Uint8Array(out.buffer, out.byteOffset, out.length);
    this.lastCompressed = { offset, data };
    return data;
  }

  // ---- the mapping --------------------------------------------------------

  /** Offset of the L2 table for l1Index (0 = none) and its copied flag. */
  private l1Entry(l1Index: number): { offset: number; copied: boolean } {
    if (l1Index >= this.header.l1_size) return { offset: 0, copied: false };
    const hi = this.l1View.getUint32(8 * l1Index);
    const lo = this.l1View.getUint32(8 * l1Index + 4);
    if ((hi & L1_RESERVED_HI) !== 0 || (lo & L1_RESERVED_LO) !== 0) {
      throw new DiskImageError(`${this.path}: L1 entry ${l1Index} has reserved bits set (corrupt image)`);
    }
    const offset = entryOffset(hi, lo);
    if (offset !== 0) this.checkMetadataCluster(offset, "L2 table");
    return { offset, copied: (hi & L2_COPIED_HI) !== 0 };
  }

  private checkMetadataCluster(offset: number, what: string): void {
    if (offset % this.clusterSize !== 0) throw new DiskImageError(`${this.path}: ${what} offset ${hex(offset)} is not cluster-aligned`);
    if (offset < this.clusterSize) throw new DiskImageError(`${this.path}: ${what} offset ${hex(offset)} points into the header`);
    if (offset + this.clusterSize > this.file.size) throw new DiskImageError(`${this.path}: ${what} offset ${hex(offset)} is outside the file`);
  }

  private loadL2(offset: number): L2Ref {
    let table = this.l2Cache.get(offset);
    if (!table) {
      table = new Uint8Array(this.clusterSize);
      this.file.readExact(table, offset, "L2 table");
      this.l2Cache.set(offset, table);
    }
    return { offset, table, view: new DataView(table.buffer, table.byteOffset, table.byteLength) };
  }

  /** What guest cluster `ci` is. */
  private lookup(ci: number): ClusterKind {
    const l1 = this.l1Entry(Math.floor(ci / this.l2Entries));
    if (l1.offset === 0) return { kind: "unallocated" };
    const l2 = this.loadL2(l1.offset);
    const i = ci % this.l2Entries;
    return this.classify(l2.view.getUint32(8 * i), l2.view.getUint32(8 * i + 4));
  }

  /** Decodes and checks an L2 entry. */
  private classify(hi: number, lo: number): ClusterKind {
    const cs = this.clusterSize;
    if (hi & L2_COMPRESSED_HI) {
      const { offset, sectors } = compressedDescriptor(hi, lo, this.header.cluster_bits);
      if (offset >= 2 ** 56 || offset >= this.file.size) throw new DiskImageError(`${this.path}: compressed cluster offset ${hex(offset)} is outside the file`);
      if (offset < cs) throw new DiskImageError(`${this.path}: compressed cluster offset ${hex(offset)} points into the header`);
      return { kind: "compressed", offset, length: sectors * 512 - (offset % 512) };
    }
    if ((hi & L2_STD_RESERVED_HI) !== 0 || (lo & L2_STD_RESERVED_LO) !== 0) {
      throw new DiskImageError(`${this.path}: L2 entry has reserved bits set (corrupt image)`);
    }
    const offset = entryOffset(hi, lo);
    const copied = (hi & L2_COPIED_HI) !== 0;
    if (offset !== 0) {
      if (offset % cs !== 0) throw new DiskImageError(`${this.path}: data cluster offset ${hex(offset)} is not cluster-aligned`);
      if (offset >= this.file.size) throw new DiskImageError(`${this.path}: data cluster offset ${hex(offset)} is outside the file`);
      if (offset < cs) throw new DiskImageError(`${this.path}: data cluster offset ${hex(offset)} points into the header`);
    }
    if (lo & L2_ZERO_LO) return { kind: "zero", offset, copied };
    if (offset === 0) return { kind: "unallocated" };
    return { kind: "normal", offset, copied };
  }

  /** The L2 table for l1Index, ready to be changed: allocated when missing. */
  private l2ForWrite(l1Index: number): L2Ref {
    const l1 = this.l1Entry(l1Index);
    if (l1.offset !== 0) {
      if (!l1.copied) {
        // Not marked as exclusively ours: only a missing flag if its refcount is one.
        if (this.rc().get(l1.offset / this.clusterSize) !== 1) {
          throw new DiskImageError(`${this.path}: L2 table at ${hex(l1.offset)} is shared (internal snapshot); tsvisor cannot write it`);
        }
        this.setL1(l1Index, l1.offset);
      }
      return this.loadL2(l1.offset);
    }
    const offset = this.rc().allocate(1);
    const table = new Uint8Array(this.clusterSize);
    this.file.pwrite(table, offset);
    this.l2Cache.set(offset, table);
    this.barrier();
    this.setL1(l1Index, offset);
    return { offset, table, view: new DataView(table.buffer) };
  }

  private setL1(l1Index: number, l2Offset: number): void {
    putEntry(this.l1View, 8 * l1Index, l2Offset, L2_COPIED_HI, 0);
    this.file.pwrite(this.l1.subarray(8 * l1Index, 8 * l1Index + 8), this.header.l1_table_offset + 8 * l1Index);
  }

  /** Writes L2 entries [first, last] of a table to the file. */
  private writeL2(l2: L2Ref, first: number, last: number): void {
    try {
      this.file.pwrite(l2.table.subarray(8 * first, 8 * (last + 1)), l2.offset + 8 * first);
    } catch (e) {
      this.l2Cache.delete(l2.offset); // the cached copy may now differ from the file
      throw e;
    }
  }

  /** Drops this image's references to whatever host clusters old L2 entries
   *  named, once the entries are gone (refcount.ts orders it on disk). */
  private releaseOld(olds: ClusterKind[]): void {
    const rc = this.rc();
    const unbatched = this.cache !== "writeback" && olds.some((k) => k.kind !== "unallocated" && !(k.kind === "zero" && k.offset === 0));
    if (unbatched) this.barrier();
    for (const k of olds) {
      if (k.kind === "normal" || (k.kind === "zero" && k.offset !== 0)) {
        rc.release(k.offset, this.clusterSize);
      } else if (k.kind === "compressed") {
        const start = k.offset - (k.offset % 512);
        rc.release(start, k.length + (k.offset % 512));
        this.lastCompressed = undefined;
      }
    }
  }

  /** Refuses a guest data write into the header, the L1 table or the refcount table. */
  private checkNotMetadata(host: number, length: number): void {
    const h = this.header;
    const rc = this.rc();
    const overlaps = (start: number, len: number) => host < start + len && start < host + length;
    if (overlaps(0, this.clusterSize) || overlaps(h.l1_table_offset, h.l1_size * 8) || overlaps(rc.tableOffset, rc.tableClusters * this.clusterSize)) {
      throw new DiskImageError(`${this.path}: an L2 entry points into the image's metadata at ${hex(host)} (corrupt image)`);
    }
  }

  // ---- writing ------------------------------------------------------------

  write(offset: number, data: Uint8Array): void {
    this.checkWritable(offset, data.length);
    this.writeRange(offset, data);
    if (this.cache === "writethrough") this.file.sync();
  }

  private writeRange(offset: number, data: Uint8Array): void {
    const cs = this.clusterSize;
    let pos = 0;
    while (pos < data.length) {
      const v = offset + pos;
      const ci = Math.floor(v / cs);
      const inC = v - ci * cs;
      const l1Index = Math.floor(ci / this.l2Entries);
      const idx = ci % this.l2Entries;
      const l2 = this.l2ForWrite(l1Index);
      const k = this.classify(l2.view.getUint32(8 * idx), l2.view.getUint32(8 * idx + 4));
      if (k.kind === "normal" && k.copied) {
        // In place; further clusters that follow on the host join the same write.
        let n = Math.min(cs - inC, data.length - pos);
        let next = idx + 1;
        while (pos + n < data.length && next < this.l2Entries) {
          const kn = this.classify(l2.view.getUint32(8 * next), l2.view.getUint32(8 * next + 4));
          if (kn.kind !== "normal" || !kn.copied || kn.offset !== k.offset + (next - idx) * cs) break;
          n += Math.min(cs, data.length - pos - n);
          next++;
        }
        this.checkNotMetadata(k.offset + inC, n);
        this.file.pwrite(data.subarray(pos, pos + n), k.offset + inC);
        pos += n;
        continue;
      }
      // A run of clusters in this L2 table that all need a new host cluster.
      let count = 1;
      let bytes = Math.min(cs - inC, data.length - pos);
      while (pos + bytes < data.length && idx + count < this.l2Entries && (count + 1) * cs <= MAX_ALLOC_RUN_BYTES) {
        const e = idx + count;
        const kn = this.classify(l2.view.getUint32(8 * e), l2.view.getUint32(8 * e + 4));
        if (kn.kind === "normal" && kn.copied) break;
        bytes += Math.min(cs, data.length - pos - bytes);
        count++;
      }
      this.allocatingWrite(l1Index, idx, count, inC, data.subarray(pos, pos + bytes));
      pos += bytes;
    }
  }

  /** Writes `chunk` at byte `inC` of guest clusters idx..idx+count-1 of one L2
   *  table into newly allocated host clusters: the parts of the first and last
   *  cluster that the chunk does not cover are copied from what the guest saw
   *  there before (backing file, zeros, compressed or shared cluster). */
  private allocatingWrite(l1Index: number, idx: number, count: number, inC: number, chunk: Uint8Array): void {
    const cs = this.clusterSize;
    const firstCi = l1Index * this.l2Entries + idx;
    let buf = chunk;
    if (inC !== 0 || chunk.length !== count * cs) {
      buf = new Uint8Array(count * cs);
      if (inC !== 0) this.readRange(firstCi * cs, buf.subarray(0, cs));
      const tail = (inC + chunk.length) % cs;
      if (tail !== 0 && !(count === 1 && inC !== 0)) this.readRange((firstCi + count - 1) * cs, buf.subarray((count - 1) * cs));
      buf.set(chunk, inC);
    }
    const host = this.rc().allocate(count);
    this.file.pwrite(buf, host);
    if (this.cache === "writethrough") this.file.sync(); // the data before the entry, on disk too
    const l2 = this.l2ForWrite(l1Index);
    const old: ClusterKind[] = [];
    for (let j = 0; j < count; j++) {
      const e = idx + j;
      old.push(this.classify(l2.view.getUint32(8 * e), l2.view.getUint32(8 * e + 4)));
      putEntry(l2.view, 8 * e, host + j * cs, L2_COPIED_HI, 0);
    }
    this.writeL2(l2, idx, idx + count - 1);
    this.releaseOld(old);
  }

  flush(): void {
    this.checkOpen();
    if (this.readOnly || this.cache === "unsafe") return;
    const rc = this.rc();
    rc.beforeSync();
    this.file.sync();
    rc.afterSync();
  }

  // ---- zeroes and discard -------------------------------------------------

  writeZeroes(offset: number, length: number, mayUnmap: boolean): void {
    this.checkWritable(offset, length);
    this.zeroRange(offset, length, mayUnmap, false);
    if (this.cache === "writethrough") this.file.sync();
  }

  /** Frees the clusters the range covers. The range reads as zeros afterwards,
   *  except on a version 2 image with a backing file: v2 has no zero flag, so
   *  discarded clusters read the backing file again (virtio-blk promises zeros
   *  only for write-zeroes, not for discard). */
  discard(offset: number, length: number): void {
    this.checkWritable(offset, length);
    this.zeroRange(offset, length, true, true);
    if (this.cache === "writethrough") this.file.sync();
  }

  private zeroRange(offset: number, length: number, mayUnmap: boolean, isDiscard: boolean): void {
    const cs = this.clusterSize;
    const end = offset + length;
    let pos = offset;
    while (pos < end) {
      const ci = Math.floor(pos / cs);
      const cStart = ci * cs;
      const cEnd = Math.min(cStart + cs, this.virtualSize);
      if (pos > cStart || end < cEnd) {
        // Part of a cluster: real zeros, unless it reads as zeros already.
        const n = Math.min(end, cStart + cs) - pos;
        if (!this.readsAsZero(ci)) this.writeRange(pos, new Uint8Array(n));
        pos += n;
        continue;
      }
      // Whole clusters, up to the end of this L2 table.
      const idx = ci % this.l2Entries;
      let count = 1;
      while (idx + count < this.l2Entries && (ci + count) * cs < end && Math.min((ci + count + 1) * cs, this.virtualSize) <= end) count++;
      this.zeroClusters(ci, count, mayUnmap, isDiscard);
      pos = Math.min(end, (ci + count) * cs);
    }
  }

  private readsAsZero(ci: number): boolean {
    const k = this.lookup(ci);
    return k.kind === "zero" || (k.kind === "unallocated" && !this.backingCovers(ci));
  }

  private backingCovers(ci: number): boolean {
    return this.backing !== undefined && ci * this.clusterSize < this.backing.virtualSize;
  }

  /** Makes guest clusters ci..ci+count-1 (one L2 table) read as zeros. */
  private zeroClusters(ci: number, count: number, mayUnmap: boolean, isDiscard: boolean): void {
    const cs = this.clusterSize;
    const v3 = this.header.version === 3;
    const l1Index = Math.floor(ci / this.l2Entries);
    const idx = ci % this.l2Entries;
    const needsEntries = this.backingCovers(ci) && (v3 || !isDiscard);
    if (this.l1Entry(l1Index).offset === 0 && !needsEntries) return; // all unallocated and reading zeros
    if (!v3 && !isDiscard && this.backingCovers(ci)) {
      // v2 over a backing file: only real zeros hide the backing data.
      this.writeRange(ci * cs, new Uint8Array(count * cs));
      return;
    }
    const l2 = this.l2ForWrite(l1Index);
    const old: ClusterKind[] = [];
    const inPlace: number[] = [];
    let first = -1;
    let last = -1;
    for (let j = 0; j < count; j++) {
      const e = idx + j;
      const k = this.classify(l2.view.getUint32(8 * e), l2.view.getUint32(8 * e + 4));
      const backed = this.backingCovers(ci + j);
      let hi = 0;
      let lo = 0;
      let host = 0;
      if (k.kind === "unallocated") {
        if (!backed || !v3) continue;
        lo = L2_ZERO_LO;
      } else if (k.kind === "zero" && (k.offset === 0 || !mayUnmap)) {
        continue;
      } else if (!mayUnmap && k.kind === "normal" && k.copied) {
        if (v3) {
          // Keep the allocation, mark it as reading zeros.
          host = k.offset;
          hi = L2_COPIED_HI;
          lo = L2_ZERO_LO;
        } else {
          inPlace.push(k.offset);
          continue;
        }
      } else if (v3 && backed) {
        lo = L2_ZERO_LO;
      }
      // (v2 without backing, or v3 with nothing below: unallocated reads zeros.)
      const kept = (k.kind === "normal" || k.kind === "zero") && host !== 0 && host === k.offset;
      if (!kept) old.push(k);
      putEntry(l2.view, 8 * e, host, hi, lo);
      if (first < 0) first = e;
      last = e;
    }
    if (first >= 0) {
      this.writeL2(l2, first, last);
      this.releaseOld(old);
    }
    if (inPlace.length > 0) {
      const zeros = new Uint8Array(cs);
      for (const host of inPlace) {
        this.checkNotMetadata(host, cs);
        this.file.pwrite(zeros, host);
      }
    }
  }

  // ---- housekeeping -------------------------------------------------------

  close(): void {
    if (this.closed) return;
    try {
      if (!this.readOnly) {
        this.rc().finish();
        if (this.cache !== "unsafe") this.file.sync();
      }
    } finally {
      this.closed = true;
      this.file.close();
      this.backing?.close();
    }
  }

  /** Bytes of the guest disk that this image (not its backing files) stores:
   *  normal and compressed clusters. Walks the L2 tables. */
  allocatedBytes(): number {
    let clusters = 0;
    for (let i = 0; i < this.header.l1_size; i++) {
      const l1 = this.l1Entry(i);
      if (l1.offset === 0) continue;
      const l2 = this.loadL2(l1.offset);
      for (let e = 0; e < this.l2Entries; e++) {
        const hi = l2.view.getUint32(8 * e);
        const lo = l2.view.getUint32(8 * e + 4);
        if (hi & L2_COMPRESSED_HI || ((lo & L2_ZERO_LO) === 0 && entryOffset(hi, lo) !== 0)) clusters++;
      }
    }
    return clusters * this.clusterSize;
  }

  private rc(): Refcounts {
    if (!this.refcounts) throw new DiskImageError(`${this.path}: the disk is read-only`);
    return this.refcounts;
  }

  /** Orders dependent metadata writes on stable storage too (not in cache=unsafe). */
  private barrier(): void {
    if (this.cache !== "unsafe") this.file.sync();
  }

  private checkOpen(): void {
    if (this.closed) throw new DiskImageError(`${this.path}: the image is closed`);
  }

  private checkWritable(offset: number, length: number): void {
    this.checkOpen();
    if (this.readOnly) throw new DiskImageError(`${this.path}: the disk is read-only`);
    checkRange(this.path, this.virtualSize, offset, length);
  }
}
