// What a p2m entry says about a guest frame (DESIGN.md, "A p2m entry says what
// a guest frame is"). One u32 per guest frame, read by the core on every TLB
// miss (src/core/p2m.ts) and changed by the memory manager with
// compare-and-swap:
//
//   present:  | host frame address (bits 31..12) | SHARED | ACCESSED | WRITABLE | 1 |
//   absent:   | slot (bits 31..5, 27 bits)       | kind (bits 4..1)             | 0 |
//
// An absent entry faults on any access; its kind says how the fault is
// resolved: a zeroed frame (never touched, found zero, ballooned, reported
// free), the page's bytes from the compressed store or the swap file (the
// slot says where), or wait (BUSY: another thread is moving the page).

export const P2M_PRESENT = 1;
export const P2M_WRITABLE = 2;
export const P2M_ACCESSED = 4;
export const P2M_SHARED = 8;
export const P2M_ADDRESS_MASK = 0xfffff000;

/** What an absent entry holds. */
export const enum Absent {
  /** Never touched since the VM started. */
  Untouched = 0,
  /** Found all zero by the sharing scanner or the reclaimer: no frame needed. */
  Zero = 1,
  /** Given to the host by the guest's balloon driver. */
  Ballooned = 2,
  /** Reported free by the guest (free page reporting). */
  Reported = 3,
  /** Its bytes are in the compressed store, at `slot`. */
  Compressed = 4,
  /** Its bytes are in the swap file, at `slot`. */
  Swapped = 5,
  /** Being moved by another thread (swapped in, reclaimed): wait and look again. */
  Busy = 6,
  /** Still in the snapshot the VM was restored from (src/snapshot/): read
   *  from the file when first touched, so restore time does not grow with
   *  memory size. The slot is the page's index in the RAM window. */
  Snapshot = 7,
  /** Still at the source of a post-copy live migration (src/snapshot/migration/):
   *  a thread touching it asks for it and waits until it arrives (the
   *  entry stays Remote until the migration's thread maps it). */
  Remote = 8,
}

/** Absent kinds whose bytes another store holds (p2m.ts PageSource). */
export type StoredKind = Absent.Compressed | Absent.Swapped | Absent.Snapshot;

export const MAX_SLOT = (1 << 27) - 1;

export function absentEntry(kind: Absent, slot = 0): number {
  return ((slot << 5) | (kind << 1)) >>> 0;
}

export function isPresent(e: number): boolean {
  return (e & P2M_PRESENT) !== 0;
}

export function absentKind(e: number): Absent {
  return ((e >>> 1) & 15) as Absent;
}

/** An absent entry whose page reads as zero without a frame (untouched, zero, ballooned, reported). */
export function readsAsZero(e: number): boolean {
  return !isPresent(e) && absentKind(e) <= Absent.Reported;
}

export function entrySlot(e: number): number {
  return e >>> 5;
}

export function entryFrame(e: number): number {
  return (e & P2M_ADDRESS_MASK) >>> 0;
}

/** A guest frame's state as the host reports it (`vm info`, the API, metrics). */
export type PageState = "private" | "shared" | "untouched" | "zero" | "ballooned" | "reported" | "compressed" | "swapped" | "busy" | "snapshot" | "remote";

export const PAGE_STATES: readonly PageState[] = ["private", "shared", "untouched", "zero", "ballooned", "reported", "compressed", "swapped", "busy", "snapshot", "remote"];

const ABSENT_STATES: readonly PageState[] = ["untouched", "zero", "ballooned", "reported", "compressed", "swapped", "busy", "snapshot", "remote"];

export function pageState(e: number): PageState {
  if (isPresent(e)) return (e & P2M_SHARED) !== 0 ? "shared" : "private";
  return ABSENT_STATES[absentKind(e)] ?? "busy";
}

/** Guest frames by state. */
export type PageCensus = Record<PageState, number>;

export function emptyCensus(): PageCensus {
  return { private: 0, shared: 0, untouched: 0, zero: 0, ballooned: 0, reported: 0, compressed: 0, swapped: 0, busy: 0, snapshot: 0, remote: 0 };
}
