// The VM's p2m (guest-physical frame -> host frame), as the core consults it.
//
// The hypervisor owns the table; the core reads it and sets one bit in it
// (ACCESSED). It covers one window of guest frames [base, base + count) (the
// RAM of the `virt` machine). Each entry is a u32: the page-aligned host
// address of the frame, plus flags in the low bits (src/memory/p2m-entry.ts
// has the whole format, including what an absent entry says). Any
// guest-physical address outside the window is device space: accesses there
// become MMIO exits, as a KVM memslot miss does.

import { H, P2M_TABLE_OFF, P2M_BASE_GFN_OFF, P2M_COUNT_OFF, DIRTY_LOG_OFF } from "./hart";

export const P2M_PRESENT: u32 = 1; // mapped and readable
export const P2M_WRITABLE: u32 = 2; // writes allowed (clear for copy-on-write, dirty logging)
/** Set by the core when a TLB miss maps the frame: the memory manager's clock
 *  clears it to find cold pages (as a CPU sets the A bit of an EPT entry). */
export const P2M_ACCESSED: u32 = 4;
/** The frame is shared with other guest frames (page sharing), read-only. */
export const P2M_SHARED: u32 = 8;

/** Lookup results that are not a host address (host addresses are page-aligned
 *  and never below the core's own data, so these small values cannot collide). */
export const P2M_MMIO: usize = 1;
export const P2M_FAULT: usize = 2;

/** Did the last p2m lookup map a shared frame? The load TLB caches shared
 *  frames like any other (a store that breaks the sharing makes every hart of
 *  the VM flush its TLB before it lands: src/memory/p2m.ts shootDownTlbs);
 *  a fetch from one marks the fetch TLB for FENCE.I (execute.ts). */
export let p2mLastShared: bool = false;

/** Host address of the frame holding `gpa`'s page for a read (or write when
 *  `write`), P2M_MMIO outside the window, P2M_FAULT when the entry forbids it. */
export function p2mLookup(gpa: u64, write: bool): usize {
  const idx = (gpa >> 12) - load<u64>(H, P2M_BASE_GFN_OFF);
  if (idx >= load<u64>(H, P2M_COUNT_OFF)) return P2M_MMIO;
  const at = <usize>load<u64>(H, P2M_TABLE_OFF) + ((<usize>idx) << 2);
  const e = atomic.load<u32>(at);
  if ((e & P2M_PRESENT) == 0) return P2M_FAULT;
  if (write) {
    if ((e & P2M_WRITABLE) == 0) return P2M_FAULT;
    // Dirty logging (hart.ts DIRTY_LOG_OFF): the page's bit in the VM's
    // bitmap, atomically as other harts and the host set bits in the same
    // words. Off, this is one load and a branch. Stores that hit the store
    // TLB skip this lookup: the host flushes the TLBs when it starts the log
    // or clears bits, so the first store to a page after that comes here.
    const log = <usize>load<u64>(H, DIRTY_LOG_OFF);
    if (log != 0) atomic.or<u32>(log + ((<usize>(idx >> 5)) << 2), (<u32>1) << (<u32>idx & 31));
  }
  // A compare-and-swap, not a store: the host may be changing the entry
  // (taking the frame away) at this moment, and must not see it revived.
  if ((e & P2M_ACCESSED) == 0) atomic.cmpxchg<u32>(at, e, e | P2M_ACCESSED);
  p2mLastShared = (e & P2M_SHARED) != 0;
  return <usize>(e & 0xfffff000);
}
