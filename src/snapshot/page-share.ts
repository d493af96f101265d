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
// The table lives in shared memory (vCPU workers fill it while resolving
// their faults: p2m.ts mapSnapshotShared) and holds a reference to each of
// its frames, charged to an owner of its own, so a frame outlives the clone
// that read it; the last VM restored from the snapshot lets go of the table
// (release), which drops those references. Frames the table holds that no
// clone maps any more stay until then: at most the snapshot's stored pages.

import type { FramePool, FrameOwner } from "../memory/frame-pool.js";

/** The table as a thread sees it: SnapshotPagesHandle carries it to the vCPU workers. */
export interface SharedSnapshotFramesHandle {
  /** Int32 per guest page: the host address of its shared frame, 0 = not read yet. */
  readonly frames: SharedArrayBuffer;
  /** Int32 counters (SHARE_*), on every thread. */
  readonly counters: SharedArrayBuffer;
  /** Who the table's frames are charged to. */
  readonly owner: FrameOwner;
}

/** Pages read from the file into a frame of the table. */
export const SHARE_FILLED = 0;
/** Mappings of a table frame made by read faults (the first one included). */
export const SHARE_MAPPED = 1;

export interface SnapshotSharingStats {
  /** Snapshots with a table (restored VMs alive). */
  tables: number;
  /** Frames the tables hold. */
  frames: number;
  /** Since the host started: pages read into tables, and mappings of them. */
  filled: number;
  mapped: number;
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

  constructor(
    private readonly pool: FramePool,
    /** An owner id for a new table's frames, and its return. */
    private readonly owners: { take(): FrameOwner; give(owner: FrameOwner): void },
  ) {}

  /** The table of snapshot `id` (of `pages` guest pages) for one more VM restored from it. */
  acquire(id: string, pages: number): SharedSnapshotFramesHandle {
    let t = this.tables.get(id);
    if (t && new Int32Array(t.handle.frames).length !== pages) throw new Error(`snapshot ${id}: a table of ${new Int32Array(t.handle.frames).length} pages, asked for ${pages}`);
    if (!t) {
      t = {
        handle: { frames: new SharedArrayBuffer(pages * 4), counters: new SharedArrayBuffer(8), owner: this.owners.take() },
        users: 0,
      };
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
    const frames = new Int32Array(t.handle.frames);
    for (let i = 0; i < frames.length; i++) {
      const f = Atomics.exchange(frames, i, 0);
      if (f !== 0) this.pool.free(f >>> 0);
    }
    const c = new Int32Array(t.handle.counters);
    this.filledBefore += c[SHARE_FILLED];
    this.mappedBefore += c[SHARE_MAPPED];
    this.owners.give(t.handle.owner);
  }

  stats(): SnapshotSharingStats {
    const s: SnapshotSharingStats = { tables: this.tables.size, frames: 0, filled: this.filledBefore, mapped: this.mappedBefore };
    for (const t of this.tables.values()) {
      const c = new Int32Array(t.handle.counters);
      s.filled += Atomics.load(c, SHARE_FILLED);
      s.mapped += Atomics.load(c, SHARE_MAPPED);
      for (const f of new Int32Array(t.handle.frames)) if (f !== 0) s.frames++;
    }
    return s;
  }
}
