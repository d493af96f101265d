// Clones sharing their snapshot's pages, at the p2m level: two VMs' p2ms over
// one table, a page source standing for the snapshot file that counts its
// reads.
import { test } from "node:test";
import assert from "node:assert/strict";
import { FramePool, FRAME_SIZE, FIRST_VM_OWNER } from "../memory/frame-pool.js";
import { P2m, P2M_PRESENT, P2M_SHARED, P2M_WRITABLE, type PageSource } from "../memory/p2m.js";
import { Absent, type StoredKind } from "../memory/p2m-entry.js";
import { SnapshotSharing, type SharedSnapshotFramesHandle } from "./page-share.js";

const RAM = 0x8000_0000n;
const PAGES = 8;

/** The snapshot file: page i is filled with the byte i + 1. */
class FakeSnapshot implements PageSource {
  reads = 0;
  constructor(private readonly share: SharedSnapshotFramesHandle) {}
  readPage(kind: StoredKind, slot: number, out: Uint8Array): void {
    assert.equal(kind, Absent.Snapshot);
    this.reads++;
    out.fill(slot + 1, 0, FRAME_SIZE);
  }
  freeSlot(): void {}
  snapshotShare(): SharedSnapshotFramesHandle {
    return this.share;
  }
}

function restoredVm(pool: FramePool, owner: number, share: SharedSnapshotFramesHandle) {
  const p2m = new P2m(pool, RAM, PAGES * FRAME_SIZE, { owner });
  const file = new FakeSnapshot(share);
  p2m.usePageSource(file);
  p2m.presetSnapshotPages(Uint32Array.from({ length: PAGES }, (_, i) => i));
  return { p2m, file, byte: (page: number) => pool.bytes[p2m.frameAt(page)!] };
}

test("clones read a snapshot page once, map one shared frame, and each write takes a private copy", () => {
  const pool = new FramePool(1 << 16);
  const sharing = new SnapshotSharing(pool, { take: () => FIRST_VM_OWNER + 10, give: () => {} });
  const frames0 = pool.framesInUse;
  const share = sharing.acquire("snap", PAGES);
  sharing.acquire("snap", PAGES);
  const a = restoredVm(pool, FIRST_VM_OWNER, share);
  const b = restoredVm(pool, FIRST_VM_OWNER + 1, share);

  a.p2m.resolveFault(RAM + 0x2000n, false);
  b.p2m.resolveFault(RAM + 0x2010n, false);
  assert.equal(a.file.reads + b.file.reads, 1, "read from the file once");
  assert.equal(a.p2m.frameAt(2), b.p2m.frameAt(2), "both map the table's frame");
  assert.equal(a.p2m.entry(2) & (P2M_PRESENT | P2M_SHARED | P2M_WRITABLE), P2M_PRESENT | P2M_SHARED);
  assert.deepEqual(sharing.stats(), { tables: 1, frames: 1, filled: 1, mapped: 2, dropped: 0 });

  // A write as a clone's first touch of a page another clone read: a copy of the table's frame.
  a.p2m.resolveFault(RAM + 0x5000n, false);
  b.p2m.resolveFault(RAM + 0x5000n, true);
  assert.equal(b.file.reads, 0, "copied from the shared frame, not read again");
  assert.notEqual(b.p2m.frameAt(5), a.p2m.frameAt(5));
  assert.equal(b.byte(5), 6);

  // A write to the shared page: the writer's own copy; the other still sees the snapshot's bytes.
  a.p2m.resolveFault(RAM + 0x2000n, true);
  pool.bytes[a.p2m.frameAt(2)!] = 0xee;
  assert.notEqual(a.p2m.frameAt(2), b.p2m.frameAt(2));
  assert.equal(b.byte(2), 3);

  // Page 2's frame is still mapped by b, page 5's by a: nothing only the table holds.
  assert.equal(sharing.dropUnmapped(), 0);
  b.p2m.release();
  assert.equal(sharing.dropUnmapped(), 1, "page 2's frame, b's mapping gone");
  sharing.release("snap");
  a.p2m.release();
  sharing.release("snap");
  assert.equal(pool.framesInUse, frames0, "every frame back");
  assert.deepEqual(sharing.stats(), { tables: 0, frames: 0, filled: 2, mapped: 3, dropped: 1 });
});
