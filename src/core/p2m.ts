// The VM's p2m (guest-physical frame -> host frame), as the core consults it.
//
// The hypervisor owns the table; the core only reads it. It covers one window of
// guest frames [base, base + count) (the RAM of the `virt` machine). Each entry
// is a u32: the page-aligned host address of the frame, plus flags in the low
// bits. Any guest-physical address outside the window is device space: accesses
// there become MMIO exits, as a KVM memslot miss does.

import { H, P2M_TABLE_OFF, P2M_BASE_GFN_OFF, P2M_COUNT_OFF } from "./hart";

export const P2M_PRESENT: u32 = 1; // mapped and readable
export const P2M_WRITABLE: u32 = 2; // writes allowed (clear for copy-on-write, dirty logging)

/** Lookup results that are not a host address (host addresses are page-aligned
 *  and never below the core's own data, so these small values cannot collide). */
export const P2M_MMIO: usize = 1;
export const P2M_FAULT: usize = 2;

/** Host address of the frame holding `gpa`'s page for a read (or write when
 *  `write`), P2M_MMIO outside the window, P2M_FAULT when the entry forbids it. */
export function p2mLookup(gpa: u64, write: bool): usize {
  const idx = (gpa >> 12) - load<u64>(H, P2M_BASE_GFN_OFF);
  if (idx >= load<u64>(H, P2M_COUNT_OFF)) return P2M_MMIO;
  const e = load<u32>(<usize>load<u64>(H, P2M_TABLE_OFF) + ((<usize>idx) << 2));
  if ((e & P2M_PRESENT) == 0) return P2M_FAULT;
  if (write && (e & P2M_WRITABLE) == 0) return P2M_FAULT;
  return <usize>(e & 0xfffff000);
}
