// Guest memory in a snapshot: a page map and the pages.
//
//   section "pagemap": u32 pages, u32 slots, u32 where[pages], u32 crc[slots]
//     where = PAGE_ZERO (reads as zero: untouched, ballooned, all-zero bytes),
//             PAGE_IN_PARENT (a diff snapshot: unchanged since its parent),
//             or the page's slot in "pages"
//   section "pages": slots x 4096 bytes, each checked by its CRC when read
//
// Restore reads only the map: every page with bytes becomes an absent p2m
// entry of kind Snapshot (p2m-entry.ts), and the first touch of a page reads
// it from the file on whichever thread touched it (a vCPU's worker, an I/O
// thread, the main thread), the way Firecracker maps its memory file
// MAP_PRIVATE and lets page faults load it. So restore time grows with the
// page map (4 bytes a page), not with the memory.

import { readSync } from "node:fs";
import type { P2m } from "../memory/p2m.js";
import { FRAME_SIZE } from "../memory/frame-pool.js";
import { crc32 } from "./crc32.js";
import { SnapshotError } from "./state.js";
import type { SnapshotFile, SnapshotWriter } from "./format.js";
import { isAllZero } from "../memory/zero.js";
import type { SharedSnapshotFramesHandle } from "./page-share.js";

export const PAGE_ZERO = 0xffff_ffff;
export const PAGE_IN_PARENT = 0xffff_fffe;
/** Pages written per file write (1 MiB). */
const BATCH_PAGES = 256;

export interface MemoryWriteResult {
  pages: number;
  /** Pages whose bytes are in this file. */
  stored: number;
  zero: number;
  inParent: number;
}

/**
 * The "pages" section and its page map, written as pages come: a page
 * written again (a live snapshot's later round) takes a new slot and the map
 * points at the newest; the older slot stays in the file, unreferenced.
 */
export class PageWriter {
  private readonly where: Uint32Array;
  private readonly crcs: number[] = [];
  private readonly section;
  private readonly batch = new Uint8Array(BATCH_PAGES * FRAME_SIZE);
  private inBatch = 0;

  constructor(private readonly w: SnapshotWriter, private readonly p2m: P2m) {
    this.where = new Uint32Array(p2m.count).fill(PAGE_ZERO);
    this.section = w.begin("pages", true);
  }

  /** Page i's bytes as they are now (all-zero bytes: marked zero, nothing stored). */
  async write(i: number): Promise<void> {
    const page = this.batch.subarray(this.inBatch * FRAME_SIZE, (this.inBatch + 1) * FRAME_SIZE);
    this.p2m.readInto(i, 0, FRAME_SIZE, page, 0);
    if (isAllZero(page)) {
      this.where[i] = PAGE_ZERO;
      return;
    }
    this.where[i] = this.crcs.length;
    this.crcs.push(crc32(page));
    if (++this.inBatch === BATCH_PAGES) await this.flush();
  }

  /** A diff snapshot: page i is as in the parent. */
  inParent(i: number): void {
    this.where[i] = PAGE_IN_PARENT;
  }

  /** Close the pages section and write the map; what the map says, counted. */
  async finish(): Promise<MemoryWriteResult> {
    await this.flush();
    this.w.end(this.section);
    const count = this.where.length;
    const map = new Uint32Array(2 + count + this.crcs.length);
    map[0] = count;
    map[1] = this.crcs.length;
    map.set(this.where, 2);
    map.set(this.crcs, 2 + count);
    await this.w.binary("pagemap", new Uint8Array(map.buffer));
    const result: MemoryWriteResult = { pages: count, stored: 0, zero: 0, inParent: 0 };
    for (const x of this.where) {
      if (x === PAGE_ZERO) result.zero++;
      else if (x === PAGE_IN_PARENT) result.inParent++;
      else result.stored++;
    }
    return result;
  }

  private async flush(): Promise<void> {
    if (this.inBatch === 0) return;
    await this.w.write(this.batch.subarray(0, this.inBatch * FRAME_SIZE));
    this.inBatch = 0;
  }
}

/**
 * Write the VM's RAM: every page (`dirty` undefined), or for a diff snapshot
 * only the pages in `dirty`, the rest marked as in the parent. The vCPUs must
 * be off their pCPUs and no device may be writing guest memory meanwhile.
 */
export async function writeMemory(w: SnapshotWriter, p2m: P2m, dirty?: Set<number>, progress?: (done: number, total: number) => void): Promise<MemoryWriteResult> {
  const count = p2m.count;
  const pages = new PageWriter(w, p2m);
  for (let i = 0; i < count; i++) {
    if (dirty && !dirty.has(i)) pages.inParent(i);
    else await pages.write(i);
    if ((i & (BATCH_PAGES - 1)) === BATCH_PAGES - 1) progress?.(i + 1, count);
  }
  const result = await pages.finish();
  progress?.(count, count);
  return result;
}

/** Plain data naming a VM's snapshot pages, for another thread's SnapshotPages.attach(). */
export interface SnapshotPagesHandle {
  /** Open descriptors (process-wide: every thread may read through them),
   *  where each file's pages start, and the CRC of each of its slots. */
  readonly files: { fd: number; path: string; pagesOffset: number; crc: SharedArrayBuffer }[];
  /** Per guest page: which file (index into files) and which slot (PAGE_ZERO: none). */
  readonly fileOf: SharedArrayBuffer;
  readonly slotOf: SharedArrayBuffer;
  /** The guest pages with bytes in a file, ascending (int32): a restore
   *  marks these in the p2m without going over every page of RAM. */
  readonly withBytes: SharedArrayBuffer;
  /** The host's table of this snapshot's pages shared by its clones (page-share.ts). */
  readonly share?: SharedSnapshotFramesHandle;
}

/** Where each page of a restored VM's RAM is, across a snapshot and its parents. */
export class SnapshotPages {
  private readonly fileOf: Uint8Array;
  /** Per guest page: its slot in its file, or PAGE_ZERO. */
  readonly slotOf: Uint32Array;
  /** The pages whose slot is not PAGE_ZERO, ascending. */
  readonly withBytes: Int32Array;
  private readonly crcs: Uint32Array[];
  /** Pages read from the files so far (this thread). */
  loads = 0;
  /** Read faults map the clones' shared frames (none: each VM reads into frames of its own). */
  readonly share: SharedSnapshotFramesHandle | undefined;

  private constructor(private readonly h: SnapshotPagesHandle) {
    this.fileOf = new Uint8Array(h.fileOf);
    this.slotOf = new Uint32Array(h.slotOf);
    this.withBytes = new Int32Array(h.withBytes);
    this.crcs = h.files.map((f) => new Uint32Array(f.crc));
    this.share = h.share;
  }

  /** The same pages, read through the host's table of frames shared by the snapshot's clones. */
  withShare(share: SharedSnapshotFramesHandle): SnapshotPages {
    if (share.pages !== this.slotOf.length) throw new SnapshotError(`a shared-page table of ${share.pages} pages for a snapshot of ${this.slotOf.length}`);
    return new SnapshotPages({ ...this.h, share });
  }

  static attach(h: SnapshotPagesHandle): SnapshotPages {
    return new SnapshotPages(h);
  }

  handle(): SnapshotPagesHandle {
    return this.h;
  }

  /**
   * The page map of `chain[0]` (a snapshot, then its parent, its parent's
   * parent...), checked against the files: `pages` pages in each, every slot
   * inside its file's pages section. The files stay open while the VM runs.
   * Linear in the page count with typed-array copies: restore stays short.
   */
  static fromChain(chain: SnapshotFile[], pages: number): SnapshotPages {
    if (chain.length > 255) throw new SnapshotError("a chain of more than 255 diff snapshots");
    const maps = chain.map((f) => readPageMap(f, pages));
    const fileOf = new Uint8Array(new SharedArrayBuffer(pages));
    const slotOf = new Uint32Array(new SharedArrayBuffer(pages * 4));
    slotOf.set(maps[0].where);
    let withBytes = maps[0].withBytes;
    if (maps.length > 1) {
      for (let i = 0; i < pages; i++) {
        if (slotOf[i] !== PAGE_IN_PARENT) continue;
        let f = 0;
        let w: number = PAGE_IN_PARENT;
        while (w === PAGE_IN_PARENT && ++f < maps.length) w = maps[f].where[i];
        if (w === PAGE_IN_PARENT) throw new SnapshotError(`${chain[maps.length - 1].path}: page ${i} is in the parent snapshot, and it has none`);
        fileOf[i] = f;
        slotOf[i] = w;
      }
      // A page in the parent may be a zero page there.
      withBytes = withBytes.filter((i) => slotOf[i] !== PAGE_ZERO);
    } else if (maps[0].parentPages > 0) {
      throw new SnapshotError(`${chain[0].path}: a diff snapshot's pages are in its parent, and it has none`);
    }
    return new SnapshotPages({
      files: chain.map((f, k) => {
        const crc = new Uint32Array(new SharedArrayBuffer(maps[k].crc.length * 4));
        crc.set(maps[k].crc);
        return { fd: f.fd, path: f.path, pagesOffset: maps[k].pagesOffset, crc: crc.buffer as SharedArrayBuffer };
      }),
      fileOf: fileOf.buffer as SharedArrayBuffer, slotOf: slotOf.buffer as SharedArrayBuffer,
      withBytes: shared(withBytes),
    });
  }

  /** Does page `index` have bytes in a file (else it reads as zero)? */
  hasBytes(index: number): boolean {
    return this.slotOf[index] !== PAGE_ZERO;
  }

  get pageCount(): number {
    return this.slotOf.length;
  }

  /** Page `index`'s bytes into `out` (4096), checked against its CRC. */
  read(index: number, out: Uint8Array): void {
    if (!Number.isInteger(index) || index < 0 || index >= this.slotOf.length) throw new SnapshotError(`snapshot page ${index} outside the page map`);
    const slot = this.slotOf[index];
    if (slot === PAGE_ZERO) {
      out.fill(0, 0, FRAME_SIZE);
      return;
    }
    const page = out.subarray(0, FRAME_SIZE);
    this.readSlots(this.fileOf[index], slot, page, index);
    this.check(index, page);
  }

  /** Where page `index` (one with bytes) is stored. */
  where(index: number): { file: number; slot: number } {
    return { file: this.fileOf[index], slot: this.slotOf[index] };
  }

  /** Slots `slot`, `slot + 1`... of file `f` into `out` (whole pages), unchecked;
   *  `index` (the first page's) names them in the error of a short file. */
  readSlots(f: number, slot: number, out: Uint8Array, index: number): void {
    const file = this.h.files[f];
    const at = file.pagesOffset + slot * FRAME_SIZE;
    let done = 0;
    while (done < out.length) {
      const n = readSync(file.fd, out, done, out.length - done, at + done);
      if (n === 0) throw new SnapshotError(`${file.path}: truncated (guest page ${index} is missing)`);
      done += n;
    }
  }

  /** Page `index`'s bytes as read, against the CRC the snapshot stored for them. */
  check(index: number, page: Uint8Array): void {
    const f = this.fileOf[index];
    if (crc32(page) !== this.crcs[f][this.slotOf[index]]) throw new SnapshotError(`${this.h.files[f].path}: guest page ${index} is corrupted (checksum mismatch)`);
    this.loads++;
  }
}

/** Pages a read-ahead reads in one go, at most (a run of adjacent slots in one file). */
const READ_AHEAD_RUN_PAGES = 64;

/**
 * Pages `indices` of `pages` read in runs of adjacent slots (a restored
 * guest's working set is mostly stored in page order), one run at a time,
 * each page checked against its CRC as read() does. A page is read only if
 * `wanted(index)` still says so when its run is formed (the guest may have
 * faulted it in meanwhile); pages with no bytes are skipped.
 */
export function* readAhead(pages: SnapshotPages, indices: ArrayLike<number>, wanted: (index: number) => boolean): Generator<{ index: number; bytes: Uint8Array }[]> {
  const stored: number[] = [];
  for (let k = 0; k < indices.length; k++) {
    const i = indices[k];
    if (Number.isInteger(i) && i >= 0 && i < pages.pageCount && pages.hasBytes(i)) stored.push(i);
  }
  const where = stored.map((i) => pages.where(i));
  const order = stored.map((_, k) => k).sort((a, b) => where[a].file - where[b].file || where[a].slot - where[b].slot);
  const buf = new Uint8Array(READ_AHEAD_RUN_PAGES * FRAME_SIZE);
  for (let start = 0; start < order.length;) {
    while (start < order.length && !wanted(stored[order[start]])) start++;
    if (start === order.length) return;
    const first = where[order[start]];
    let end = start + 1;
    while (end < order.length && end - start < READ_AHEAD_RUN_PAGES) {
      const w = where[order[end]];
      if (w.file !== first.file || w.slot !== first.slot + (end - start)) break;
      end++;
    }
    const run = buf.subarray(0, (end - start) * FRAME_SIZE);
    pages.readSlots(first.file, first.slot, run, stored[order[start]]);
    const out: { index: number; bytes: Uint8Array }[] = [];
    for (let k = start; k < end; k++) {
      const index = stored[order[k]];
      const bytes = run.subarray((k - start) * FRAME_SIZE, (k - start + 1) * FRAME_SIZE);
      pages.check(index, bytes);
      out.push({ index, bytes });
    }
    yield out;
    start = end;
  }
}

interface PageMap {
  where: Uint32Array;
  /** The pages not PAGE_ZERO (in a file, or in the parent), ascending. */
  withBytes: Int32Array;
  crc: Uint32Array;
  pagesOffset: number;
  /** Pages marked PAGE_IN_PARENT. */
  parentPages: number;
}

function readPageMap(f: SnapshotFile, pages: number): PageMap {
  // A live snapshot stores a page again for each round it was rewritten in: up to as many slots as the pages section holds.
  const stored = f.has("pages") ? Math.floor(f.section("pages").length / FRAME_SIZE) : 0;
  const raw = f.binary("pagemap", 8 + 4 * pages + 4 * Math.max(pages, stored));
  if (raw.length < 8 || raw.length % 4 !== 0) throw new SnapshotError(`${f.path}: page map of ${raw.length} bytes`);
  const words = new Uint32Array(raw.buffer, raw.byteOffset, raw.length / 4);
  const [count, slots] = [words[0], words[1]];
  if (count !== pages) throw new SnapshotError(`${f.path}: page map of ${count} pages, the VM has ${pages} (a different memory size)`);
  if (words.length !== 2 + count + slots) throw new SnapshotError(`${f.path}: page map of ${raw.length} bytes for ${count} pages and ${slots} slots`);
  const section = f.section("pages");
  if (!section.perPageCrc || section.length < slots * FRAME_SIZE) throw new SnapshotError(`${f.path}: the pages section holds ${Math.floor(section.length / FRAME_SIZE)} pages, the map names ${slots}`);
  const where = words.subarray(2, 2 + count);
  // Checked as int32 (PAGE_ZERO is -1, PAGE_IN_PARENT -2): a uint32 above
  // 2^30 is no small integer to V8, and this loop over every page of a
  // restore ran at half speed boxing them.
  const entries = new Int32Array(where.buffer, where.byteOffset, count);
  const [zero, inParent] = [PAGE_ZERO | 0, PAGE_IN_PARENT | 0];
  let parentPages = 0;
  const withBytes = new Int32Array(count);
  let n = 0;
  for (let i = 0; i < count; i++) {
    const w = entries[i];
    if (w === zero) continue;
    if (w === inParent) parentPages++;
    else if (w < 0 || w >= slots) throw new SnapshotError(`${f.path}: page ${i} names slot ${where[i]}, there are ${slots}`);
    withBytes[n++] = i;
  }
  return { where, withBytes: withBytes.subarray(0, n), crc: words.subarray(2 + count), pagesOffset: section.offset, parentPages };
}

/** `a`'s values in memory every thread can see. */
function shared(a: Int32Array): SharedArrayBuffer {
  const out = new Int32Array(new SharedArrayBuffer(a.length * 4));
  out.set(a);
  return out.buffer as SharedArrayBuffer;
}
