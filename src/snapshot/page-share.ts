// Clones share their snapshot's pages from the moment of restore (issue 15:
// "a clone costs only what it writes"). Every VM restored from one snapshot
// on a host uses one table of host frames, one per guest page: the first
// clone to read a page reads it from the file into a frame of the table, and
// every clone that reads it after maps that frame, shared and read-only
// (P2M_SHARED), as the page-sharing scanner's merged pages are; a write
// gives the writer a private copy (p2m.ts breakSharing). Firecracker gets
// the same from the kernel by mapping its memory file MAP_PRIVATE in every
// clone.
//
// The table lives in frames of the pool (vCPU workers fill it while
// resolving their faults: p2m.ts mapSnapshotShared), charged with its frames
// to an owner of its own, and holds a reference to each frame it names, so a
// frame outlives the clone that read it; the last VM restored from the
// snapshot lets go of the table (release), which drops those references.
// Frames the table holds that no clone maps any more are a cache: the memory
// manager drops them first when the host runs short (dropUnmapped).

import { framesFor, type FramePool, type FrameOwner } from "../memory/frame-pool.js";
import type { HostAddress } from "../memory/address.js";

/** The table, as plain data for the vCPU workers (SnapshotPagesHandle carries it). */
export interface SharedSnapshotFramesHandle {
  /** Host address of the table: SHARE_* counters, then per guest page the
   *  host address of its shared frame (u32, 0 = not read yet). */
  readonly table: HostAddress;
  readonly pages: number;
  /** Who the table and its frames are charged to. */
  readonly owner: FrameOwner;
}

/** Table words: pages read from the file into a frame of the table... */
export const SHARE_FILLED = 0;
/** ...mappings of a table frame made by read faults (the first one included)... */
export const SHARE_MAPPED = 1;
/** ...then page i's frame at word SHARE_FRAMES + i. */
export const SHARE_FRAMES = 2;

export interface SnapshotSharingStats {
  /** Snapshots with a table (restored VMs alive). */
  tables: number;
  /** Frames the tables hold. */
  frames: number;
  /** Since the host started: pages read into tables, mappings of them, and
   *  frames no clone mapped dropped under memory pressure. */
  filled: number;
  mapped: number;
  dropped: number;
}

interface Table {
  handle: SharedSnapshotFramesHandle;
  users: number;
}

/** The host's tables, by snapshot id (main thread). */
export class SnapshotSharing {
  private readonly tables = new Map<string, Table>();
  private filledBefore = 0;
  private mappedBefore = 0;
  private dropped = 0;

  constructor(
    private readonly pool: FramePool,
    /** An owner id for a new table's frames, and its return. */
    private readonly owners: { take(): FrameOwner; give(owner: FrameOwner): void },
  ) {}

  /** The table of snapshot `id` (of `pages` guest pages) for one more VM restored from it. */
  acquire(id: string, pages: number): SharedSnapshotFramesHandle {
    let t = this.tables.get(id);
    if (t && t.handle.pages !== pages) throw new Error(`snapshot ${id}: a table of ${t.handle.pages} pages, asked for ${pages}`);
    if (!t) {
      const owner = this.owners.take();
      let table: HostAddress;
      try {
        // Frames come zeroed: no counts yet, no page read.
        table = this.pool.allocContiguous(tableFrames(pages), owner);
      } catch (e) {
        this.owners.give(owner);
        throw e;
      }
      t = { handle: { table, pages, owner }, users: 0 };
      this.tables.set(id, t);
    }
    t.users++;
    return t.handle;
  }

  /** A VM restored from snapshot `id` is gone; with the last one the table's frames go back. */
  release(id: string): void {
    const t = this.tables.get(id);
    if (!t || --t.users > 0) return;
    this.tables.delete(id);
    const { table, pages, owner } = t.handle;
    const first = table >>> 2;
    for (let i = 0; i < pages; i++) {
      const f = Atomics.exchange(this.pool.words, first + SHARE_FRAMES + i, 0) >>> 0;
      if (f !== 0) this.pool.free(f);
    }
    const words = this.pool.words;
    this.filledBefore += Atomics.load(words, first + SHARE_FILLED);
    this.mappedBefore += Atomics.load(words, first + SHARE_MAPPED);
    this.pool.freeContiguous(table, tableFrames(pages));
    this.owners.give(owner);
  }

  /**
   * Give back the frames only the tables hold (no clone maps them): a page
   * read again later comes from the file. Any thread may be mapping one
   * meanwhile: the slot is cleared first, and a mapper checks the slot after
   * taking its reference (p2m.ts mapSnapshotShared). Returns the frames freed.
   */
  dropUnmapped(): number {
    let freed = 0;
    for (const { handle: { table, pages } } of this.tables.values()) {
      const first = (table >>> 2) + SHARE_FRAMES;
      for (let i = 0; i < pages; i++) {
        const f = Atomics.load(this.pool.words, first + i) >>> 0;
        if (f === 0 || this.pool.refCount(f) !== 1) continue;
        if (Atomics.compareExchange(this.pool.words, first + i, f | 0, 0) !== (f | 0)) continue;
        this.pool.free(f);
        freed++;
      }
    }
    this.dropped += freed;
    return freed;
  }

  stats(): SnapshotSharingStats {
    const s: SnapshotSharingStats = { tables: this.tables.size, frames: 0, filled: this.filledBefore, mapped: this.mappedBefore, dropped: this.dropped };
    const words = this.pool.words;
    for (const { handle: { table, pages } } of this.tables.values()) {
      const first = table >>> 2;
      s.filled += Atomics.load(words, first + SHARE_FILLED);
      s.mapped += Atomics.load(words, first + SHARE_MAPPED);
      for (let i = 0; i < pages; i++) if (Atomics.load(words, first + SHARE_FRAMES + i) !== 0) s.frames++;
    }
    return s;
  }
}

function tableFrames(pages: number): number {
  return framesFor((SHARE_FRAMES + pages) * 4);
}
