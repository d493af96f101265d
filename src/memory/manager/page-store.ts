// The host's page store: where the memory manager puts the pages it takes out
// of guests under pressure, and where any thread finds them again on a p2m
// fault (p2m.ts PageSource). Two tiers, as ESXi has them: a bounded pool of
// compressed pages in memory, then a swap file. A page that does not
// compress to half goes straight to the swap file raw; compressed pages
// pushed out of the pool go to the swap file as they are (a slot shorter
// than a page holds compressed bytes).

import {
  CompressedStore, SwapFile, compressPage, decompressPage, isZeroPage,
  type CompressedStoreHandle, type SwapFileHandle,
} from "../store/index.js";
import { Absent, type StoredKind } from "../p2m-entry.js";
import { SnapshotPages, type SnapshotPagesHandle } from "../../snapshot/memory.js";
import type { SharedSnapshotFramesHandle } from "../../snapshot/page-share.js";
import { RemotePages, type RemotePagesHandle } from "../../snapshot/migration/remote-pages.js";
import type { PageSource } from "../p2m.js";
import { FRAME_SIZE } from "../frame-pool.js";

export interface PageStoreHandle {
  readonly compressed: CompressedStoreHandle | undefined;
  readonly swap: SwapFileHandle | undefined;
  /** A VM restored from a snapshot: the pages still in its files. */
  readonly snapshot?: SnapshotPagesHandle;
  /** A VM arriving by post-copy migration: the pages still at the source. */
  readonly remote?: RemotePagesHandle;
}

/** Where a page went (PageStore.stow). */
export type Stowed = { kind: Absent.Zero } | { kind: Absent.Compressed | Absent.Swapped; slot: number } | undefined;

export class PageStore implements PageSource {
  /** Pages stowed compressed / raw, and compressed pages moved on to swap. */
  stowedCompressed = 0;
  stowedRaw = 0;
  movedToSwap = 0;

  constructor(
    readonly compressed: CompressedStore | undefined,
    readonly swap: SwapFile | undefined,
    /** One VM's snapshot pages (a store per restored VM shares the host's two tiers). */
    readonly snapshot?: SnapshotPages,
    readonly remote?: RemotePages,
  ) {}

  static attach(h: PageStoreHandle): PageStore {
    return new PageStore(h.compressed && CompressedStore.attach(h.compressed), h.swap && SwapFile.attach(h.swap), h.snapshot && SnapshotPages.attach(h.snapshot), h.remote && RemotePages.attach(h.remote));
  }

  handle(): PageStoreHandle {
    return { compressed: this.compressed?.handle(), swap: this.swap?.handle(), snapshot: this.snapshot?.handle(), remote: this.remote?.handle() };
  }

  /** The host's two tiers plus a restored VM's snapshot pages, or a migrating
   *  VM's pages still at its source (its p2m's page source on this thread). */
  withSnapshot(pages: SnapshotPages | undefined, remote?: RemotePages): PageStore {
    return pages || remote ? new PageStore(this.compressed, this.swap, pages, remote) : this;
  }

  /** A restored VM's snapshot pages shared with its clones (snapshot/page-share.ts), if any. */
  snapshotShare(): SharedSnapshotFramesHandle | undefined {
    return this.snapshot?.share;
  }

  awaitRemote(index: number, stillRemote: () => boolean): void {
    if (!this.remote) throw new Error("a page still at a migration's source, and no link to it");
    this.remote.await(index, stillRemote);
  }

  readPage(kind: StoredKind, slot: number, out: Uint8Array): void {
    if (kind === Absent.Snapshot) {
      if (!this.snapshot) throw new Error("a snapshot page, and no snapshot attached");
      this.snapshot.read(slot, out);
      return;
    }
    if (kind === Absent.Compressed) {
      if (!this.compressed) throw new Error("a compressed page, and no compressed store");
      decompressPage(this.compressed.read(slot), out);
      return;
    }
    if (!this.swap) throw new Error("a swapped page, and no swap file");
    const data = this.swap.read(slot);
    if (data.length === FRAME_SIZE) out.set(data);
    else decompressPage(data, out);
  }

  freeSlot(kind: StoredKind, slot: number): void {
    // A snapshot page stays in its file (clones and later restores read it too).
    if (kind === Absent.Snapshot) return;
    if (kind === Absent.Compressed) this.compressed?.free(slot);
    else this.swap?.free(slot);
  }

  /**
   * Put a page (4096 bytes, a view on guest memory) somewhere: nowhere when
   * it is all zero, compressed when it halves and the pool has room, else in
   * the swap file. Undefined when there is no room anywhere. Throws the swap
   * file's SwapError when the write fails (the caller keeps the page).
   */
  stow(page: Uint8Array, allowCompress: boolean, allowSwap: boolean): Stowed {
    if (isZeroPage(page)) return { kind: Absent.Zero };
    if (allowCompress && this.compressed) {
      const packed = compressPage(page);
      if (packed) {
        const slot = this.compressed.put(packed);
        if (slot >= 0) {
          this.stowedCompressed++;
          return { kind: Absent.Compressed, slot };
        }
      }
    }
    if (!allowSwap) return undefined;
    const slot = this.toSwap(page);
    if (slot < 0) return undefined;
    this.stowedRaw++;
    return { kind: Absent.Swapped, slot };
  }

  /** Move a compressed page to the swap file (the pool is filling up): the
   *  new swap slot, or -1 when the swap file is full. The caller frees the
   *  compressed slot once the entry names the swap slot. */
  moveToSwap(compressedSlot: number): number {
    if (!this.compressed) return -1;
    const slot = this.toSwap(this.compressed.read(compressedSlot));
    if (slot >= 0) this.movedToSwap++;
    return slot;
  }

  /** `data` in a new swap slot: the slot, or -1 when there is no swap file or it is full. */
  private toSwap(data: Uint8Array): number {
    const slot = this.swap?.alloc() ?? -1;
    if (slot < 0) return -1;
    try {
      this.swap!.write(slot, data);
    } catch (e) {
      this.swap!.free(slot);
      throw e;
    }
    return slot;
  }

  close(): void {
    this.swap?.close();
  }
}
