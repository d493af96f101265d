// Host cluster management: the refcount table, refcount blocks and cluster
// allocation (QEMU docs/interop/qcow2.txt: "Host cluster management").
//
//   refcount_block_entries = cluster_size * 8 / refcount_bits
//   refcount_table_index   = cluster / refcount_block_entries
//   refcount_block_index   = cluster % refcount_block_entries
//
// Changes go to the file as they are made (only decrements may wait, see
// below), in an order that keeps the image consistent at every moment (a SIGKILL between any two writes leaves at most
// leaked clusters, never a reference to a cluster whose refcount is too low):
//   - a new refcount block is written before the table entry that points to it;
//   - a grown refcount table (and the blocks that describe it) is written
//     before the header points to it, and the old table is freed after;
//   - allocate() raises refcounts before the caller references the clusters;
//     callers drop references before they call release().
// `barrier` runs between dependent steps: an fsync, so that the order also
// holds on stable storage after a power loss (a no-op for cache=unsafe).
//
// With `batch` (cache=writeback) the fsyncs are amortized, as QEMU's metadata
// cache does with its flush dependencies:
//   - allocate() hands out clusters from a pool whose refcounts were raised,
//     and made durable, ahead of use: the pool is topped up just before the
//     guest's flush syncs the file (so its sync covers it), or on demand with
//     a barrier of its own when the pool runs dry between flushes;
//   - release() only records the decrements; they are applied after the next
//     sync, when the removal of the references they stand for is durable.
// A crash then leaks the unused pool and the pending decrements, never more.
// The pool lies inside the file (the file is extended over it), so leaked
// pool clusters are ordinary leaks that `qemu-img check -r leaks` reclaims.

import { HostFile } from "../host-file.js";
import { DiskImageError } from "../types.js";
import { ClusterCache } from "./lru.js";
import { MAX_REFCOUNT_TABLE_BYTES, entryOffset, putEntry, hex } from "./format.js";
import { HEADER_REFCOUNT_TABLE_AT } from "./header.js";

const REFCOUNT_CACHE_BYTES = 1 << 20;
/** Refcounts that a scan may find in use beyond the end of the file before it
 *  calls the image corrupt, besides a few pools' worth (a crash between
 *  raising a pool's refcounts and extending the file leaves one; a hostile
 *  image, any number). */
const MAX_USED_BEYOND_EOF = 4096;
/** Pool sizes in bytes: the least a top-up asks for, and the most. */
const POOL_MIN_BYTES = 1 << 20;
const POOL_MAX_BYTES = 8 << 20;
/** Decrements waiting for a sync before one is forced. */
const MAX_PENDING_RELEASES = 4096;

export class Refcounts {
  readonly cs: number;
  readonly refcountBits: number;
  /** refcount_block_entries */
  readonly entriesPerBlock: number;
  readonly maxRefcount: number;
  table: Uint8Array;
  tableOffset: number;
  tableClusters: number;
  private tableView: DataView;
  private readonly cache: ClusterCache;
  /** No cluster below this one is free (a search hint). */
  private freeCursor = 0;
  /** The first free cluster the last search passed, -1 if none. */
  private firstFreeSeen = -1;
  /** Clusters [poolNext, poolEnd) have refcount 1 and no user yet (batch mode). */
  private poolNext = 0;
  private poolEnd = 0;
  /** Size of the next on-demand pool, in clusters (doubles until a sync). */
  private poolClusters: number;
  /** Clusters handed out since the last sync: how large the next top-up is. */
  private allocatedSinceSync = 0;
  /** Byte ranges whose references are gone, waiting for the next sync (batch mode). */
  private pending: [number, number][] = [];

  constructor(
    private readonly file: HostFile,
    readonly clusterBits: number,
    readonly refcountOrder: number,
    refcountTableOffset: number,
    refcountTableClusters: number,
    private readonly barrier: () => void,
    private readonly batch: boolean,
  ) {
    this.cs = 2 ** clusterBits;
    this.refcountBits = 2 ** refcountOrder;
    this.entriesPerBlock = (this.cs * 8) / this.refcountBits;
    this.maxRefcount = this.refcountBits >= 53 ? Number.MAX_SAFE_INTEGER : 2 ** this.refcountBits - 1;
    this.tableOffset = refcountTableOffset;
    this.tableClusters = refcountTableClusters;
    this.table = new Uint8Array(refcountTableClusters * this.cs);
    file.readExact(this.table, refcountTableOffset, "refcount table");
    this.tableView = new DataView(this.table.buffer);
    this.cache = ClusterCache.forBudget(REFCOUNT_CACHE_BYTES, this.cs);
    this.poolClusters = Math.ceil(POOL_MIN_BYTES / this.cs);
  }

  get tableEntries(): number {
    return this.table.length / 8;
  }

  /** Offset of the refcount block for table index t, 0 when there is none. */
  blockOffset(t: number): number {
    if (t >= this.tableEntries) return 0;
    const hi = this.tableView.getUint32(8 * t);
    const lo = this.tableView.getUint32(8 * t + 4);
    const off = entryOffset(hi, lo);
    if ((hi & 0xff00_0000) !== 0 || (lo & 0x1ff) !== 0) {
      throw new DiskImageError(`${this.file.path}: refcount table entry ${t} has reserved bits set`);
    }
    if (off === 0) return 0;
    if (off % this.cs !== 0) throw new DiskImageError(`${this.file.path}: refcount block offset ${hex(off)} is not cluster-aligned`);
    if (off + this.cs > this.file.size) throw new DiskImageError(`${this.file.path}: refcount block offset ${hex(off)} is outside the file`);
    return off;
  }

  private loadBlock(off: number): Uint8Array {
    let b = this.cache.get(off);
    if (!b) {
      b = new Uint8Array(this.cs);
      this.file.readExact(b, off, "refcount block");
      this.cache.set(off, b);
    }
    return b;
  }

  /** The refcount of host cluster `cluster` (an index, not a byte offset). */
  get(cluster: number): number {
    const t = Math.floor(cluster / this.entriesPerBlock);
    const off = this.blockOffset(t);
    if (off === 0) return 0;
    return this.getIn(this.loadBlock(off), cluster % this.entriesPerBlock);
  }

  getIn(block: Uint8Array, i: number): number {
    switch (this.refcountOrder) {
      case 3: return block[i];
      case 4: return (block[2 * i] << 8) | block[2 * i + 1];
      case 5: return ((block[4 * i] << 24) | (block[4 * i + 1] << 16) | (block[4 * i + 2] << 8) | block[4 * i + 3]) >>> 0;
      case 6: {
        const v = new DataView(block.buffer, block.byteOffset + 8 * i, 8);
        const hi = v.getUint32(0);
        return hi >= 0x20_0000 ? Number.MAX_SAFE_INTEGER : hi * 0x1_0000_0000 + v.getUint32(4);
      }
      default: {
        const bit = i * this.refcountBits;
        return (block[bit >> 3] >> (bit & 7)) & ((1 << this.refcountBits) - 1);
      }
    }
  }

  private setIn(block: Uint8Array, i: number, value: number): void {
    switch (this.refcountOrder) {
      case 3: block[i] = value; return;
      case 4: block[2 * i] = value >> 8; block[2 * i + 1] = value & 0xff; return;
      case 5: new DataView(block.buffer, block.byteOffset).setUint32(4 * i, value); return;
      case 6: {
        const v = new DataView(block.buffer, block.byteOffset + 8 * i, 8);
        v.setUint32(0, Math.floor(value / 0x1_0000_0000));
        v.setUint32(4, value % 0x1_0000_0000);
        return;
      }
      default: {
        const bit = i * this.refcountBits;
        const mask = ((1 << this.refcountBits) - 1) << (bit & 7);
        block[bit >> 3] = (block[bit >> 3] & ~mask) | ((value << (bit & 7)) & mask);
      }
    }
  }

  /** Byte range of entries [first, last] inside a block. */
  private entryBytes(first: number, last: number): [number, number] {
    return [Math.floor((first * this.refcountBits) / 8), Math.ceil(((last + 1) * this.refcountBits) / 8)];
  }

  /** Adds `delta` to the refcounts of `count` clusters from `first`, one write per refcount block. */
  adjust(first: number, count: number, delta: number): void {
    let c = first;
    const end = first + count;
    while (c < end) {
      const t = Math.floor(c / this.entriesPerBlock);
      const off = this.blockOffset(t);
      if (off === 0) throw new DiskImageError(`${this.file.path}: cluster ${hex(c * this.cs)} has no refcount block`);
      const block = this.loadBlock(off);
      const i0 = c % this.entriesPerBlock;
      const i1 = Math.min(this.entriesPerBlock, i0 + (end - c)) - 1;
      // Check the whole span first so a failure changes nothing.
      for (let i = i0; i <= i1; i++) {
        const r = this.getIn(block, i) + delta;
        if (r < 0) throw new DiskImageError(`${this.file.path}: refcount of cluster ${hex((t * this.entriesPerBlock + i) * this.cs)} would drop below zero`);
        if (r > this.maxRefcount) throw new DiskImageError(`${this.file.path}: refcount of cluster ${hex((t * this.entriesPerBlock + i) * this.cs)} would overflow`);
      }
      for (let i = i0; i <= i1; i++) this.setIn(block, i, this.getIn(block, i) + delta);
      const [b0, b1] = this.entryBytes(i0, i1);
      this.file.pwrite(block.subarray(b0, b1), off + b0);
      if (delta < 0) this.freeCursor = Math.min(this.freeCursor, t * this.entriesPerBlock + i0);
      c += i1 - i0 + 1;
    }
  }

  /** Drops one reference from every host cluster overlapping [offset, offset + length):
   *  at once, or after the next sync in batch mode. */
  release(offset: number, length: number): void {
    if (length <= 0) return;
    if (!this.batch) return this.releaseNow(offset, length);
    this.pending.push([offset, length]);
    if (this.pending.length >= MAX_PENDING_RELEASES) {
      this.barrier();
      this.afterSync();
    }
  }

  private releaseNow(offset: number, length: number): void {
    const first = Math.floor(offset / this.cs);
    const last = Math.floor((offset + length - 1) / this.cs);
    this.adjust(first, last - first + 1, -1);
  }

  /** Before the guest's flush syncs the file: top up the pool, so the sync
   *  makes its refcounts durable too. */
  beforeSync(): void {
    if (!this.batch || this.allocatedSinceSync === 0) return; // an idle guest's flush changes nothing
    const min = Math.ceil(POOL_MIN_BYTES / this.cs);
    const target = Math.min(Math.max(this.allocatedSinceSync, min), Math.ceil(POOL_MAX_BYTES / this.cs));
    if (this.poolEnd - this.poolNext < target / 2) this.refillPool(target);
    this.allocatedSinceSync = 0;
    this.poolClusters = min;
  }

  /** After a sync: the references dropped before it are gone for good, so
   *  their refcounts can drop. */
  afterSync(): void {
    const pending = this.pending;
    this.pending = [];
    for (const [offset, length] of pending) this.releaseNow(offset, length);
  }

  /** At close: pending decrements applied, the unused pool given back (and
   *  cut off the end of the file when it is the tail). */
  finish(): void {
    if (this.pending.length > 0) {
      this.barrier();
      this.afterSync();
    }
    if (this.poolEnd > this.poolNext) {
      this.adjust(this.poolNext, this.poolEnd - this.poolNext, -1);
      if (this.poolEnd * this.cs >= this.file.size && this.poolNext * this.cs < this.file.size) this.file.truncate(this.poolNext * this.cs);
    }
    this.poolNext = this.poolEnd = 0;
  }

  /** Allocates `n` contiguous host clusters (refcount 1) and returns the byte offset of the first. */
  allocate(n: number): number {
    if (!this.batch) return this.allocateRun(n) * this.cs;
    if (this.poolEnd - this.poolNext < n) {
      this.refillPool(Math.max(n, this.poolClusters));
      this.barrier(); // the refcounts are durable before anything points to these clusters
      this.poolClusters = Math.min(2 * this.poolClusters, Math.ceil(POOL_MAX_BYTES / this.cs));
    }
    const start = this.poolNext;
    this.poolNext += n;
    this.allocatedSinceSync += n;
    return start * this.cs;
  }

  /** Gives back what is left of the pool and raises the refcounts of a new one of `size` clusters. */
  private refillPool(size: number): void {
    if (this.poolEnd > this.poolNext) this.adjust(this.poolNext, this.poolEnd - this.poolNext, -1);
    this.poolNext = this.poolEnd = 0;
    const start = this.allocateRun(size);
    this.poolNext = start;
    this.poolEnd = start + size;
    if (this.poolEnd * this.cs > this.file.size) this.file.truncate(this.poolEnd * this.cs);
  }

  /** Raises the refcounts of the first run of `n` free clusters; returns the first's index. */
  private allocateRun(n: number): number {
    for (let attempt = 0; attempt < 32; attempt++) {
      const start = this.findFree(n);
      const tFirst = Math.floor(start / this.entriesPerBlock);
      const tLast = Math.floor((start + n - 1) / this.entriesPerBlock);
      if (tLast >= this.tableEntries) {
        this.grow(tLast + 1);
        continue;
      }
      let created = false;
      for (let t = tFirst; t <= tLast && t < this.tableEntries; t++) {
        if (this.blockOffset(t) === 0) {
          this.createBlock(t);
          created = true;
        }
      }
      if (created) continue; // the new block may sit in the run: search again
      this.adjust(start, n, +1);
      // Free clusters skipped because their run was too short stay in reach.
      this.freeCursor = this.firstFreeSeen >= 0 && this.firstFreeSeen < start ? this.firstFreeSeen : start + n;
      return start;
    }
    throw new DiskImageError(`${this.file.path}: cannot allocate ${n} clusters (refcount structures look corrupt)`);
  }

  /** The first run of `n` clusters with refcount 0, from the search hint on.
   *  Clusters beyond the refcount table's reach count as free. */
  private findFree(n: number): number {
    const epb = this.entriesPerBlock;
    const eofCluster = Math.ceil(this.file.size / this.cs);
    let usedBeyondEof = 0;
    const maxUsedBeyondEof = MAX_USED_BEYOND_EOF + 4 * Math.ceil(POOL_MAX_BYTES / this.cs);
    let c = this.freeCursor;
    let start = c;
    let run = 0;
    this.firstFreeSeen = -1;
    for (;;) {
      const t = Math.floor(c / epb);
      if (t >= this.tableEntries) return run > 0 ? start : c;
      const off = this.blockOffset(t);
      if (off === 0) {
        if (run === 0) start = c;
        run += (t + 1) * epb - c;
        if (run >= n) return start;
        c = (t + 1) * epb;
        continue;
      }
      const block = this.loadBlock(off);
      for (let i = c % epb; i < epb; i++, c++) {
        if (this.getIn(block, i) === 0) {
          if (run === 0) {
            start = c;
            if (this.firstFreeSeen < 0) this.firstFreeSeen = c;
            if (n === 1) return start;
          }
          if (++run >= n) return start;
        } else {
          run = 0;
          if (c >= eofCluster && ++usedBeyondEof > maxUsedBeyondEof) {
            throw new DiskImageError(`${this.file.path}: refcounts beyond the end of the file are in use (corrupt image)`);
          }
        }
      }
    }
  }

  /** Creates the refcount block for table index t (or first the one for the
   *  cluster it will occupy): block written, then the table entry. */
  private createBlock(t: number): void {
    const c = this.findFree(1);
    const tc = Math.floor(c / this.entriesPerBlock);
    if (tc >= this.tableEntries) return this.grow(tc + 1);
    const block = new Uint8Array(this.cs);
    if (tc === t || this.blockOffset(tc) === 0) {
      // The block lies in the range it describes: it counts itself.
      this.setIn(block, c % this.entriesPerBlock, 1);
      this.file.pwrite(block, c * this.cs);
      this.cache.set(c * this.cs, block);
      this.barrier();
      this.setTableEntry(tc, c * this.cs);
    } else {
      this.adjust(c, 1, +1);
      this.file.pwrite(block, c * this.cs);
      this.cache.set(c * this.cs, block);
      this.barrier();
      this.setTableEntry(t, c * this.cs);
    }
  }

  private setTableEntry(t: number, off: number): void {
    putEntry(this.tableView, 8 * t, off, 0, 0);
    this.file.pwrite(this.table.subarray(8 * t, 8 * t + 8), this.tableOffset + 8 * t);
  }

  /** Moves the refcount table to a larger one of at least `minEntries`
   *  entries, placed with new refcount blocks that describe it just beyond the
   *  old table's reach (every cluster there is free). */
  private grow(minEntries: number): void {
    const epb = this.entriesPerBlock;
    const cs = this.cs;
    const T = this.tableEntries;
    const S = T * epb; // first cluster no refcount block describes
    const want = Math.max(minEntries, T + Math.ceil(T / 2), T + 1);
    let m = 1;
    let k = 1;
    for (let iter = 0; ; iter++) {
      if (iter > 64) throw new DiskImageError(`${this.file.path}: cannot lay out a larger refcount table`);
      const need = Math.max(want, Math.floor((S + m + k - 1) / epb) + 1);
      const k2 = Math.ceil((need * 8) / cs);
      const m2 = Math.floor((S + m + k2 - 1) / epb) - T + 1;
      if (k2 === k && m2 === m) break;
      k = k2;
      m = m2;
    }
    if (k * cs > MAX_REFCOUNT_TABLE_BYTES) {
      throw new DiskImageError(`${this.file.path}: the image is too large: its refcount table would exceed 8 MiB`);
    }
    // New refcount blocks at S..S+m-1, the new table at S+m..S+m+k-1.
    const blocks = new Uint8Array(m * cs);
    for (let c = S; c < S + m + k; c++) {
      const j = Math.floor(c / epb) - T;
      this.setIn(blocks.subarray(j * cs, (j + 1) * cs), c % epb, 1);
    }
    const table = new Uint8Array(k * cs);
    table.set(this.table);
    const tableView = new DataView(table.buffer);
    for (let j = 0; j < m; j++) putEntry(tableView, 8 * (T + j), (S + j) * cs, 0, 0);
    this.file.pwrite(blocks, S * cs);
    this.file.pwrite(table, (S + m) * cs);
    this.barrier();
    const hdr = new Uint8Array(12);
    const hv = new DataView(hdr.buffer);
    hv.setBigUint64(0, BigInt((S + m) * cs));
    hv.setUint32(8, k);
    this.file.pwrite(hdr, HEADER_REFCOUNT_TABLE_AT);
    this.barrier();
    const oldOffset = this.tableOffset;
    const oldClusters = this.tableClusters;
    this.table = table;
    this.tableView = tableView;
    this.tableOffset = (S + m) * cs;
    this.tableClusters = k;
    for (let j = 0; j < m; j++) this.cache.set((S + j) * cs, blocks.slice(j * cs, (j + 1) * cs));
    this.adjust(oldOffset / cs, oldClusters, -1);
  }
}
