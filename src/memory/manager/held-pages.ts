// Taking pages out of running guests safely (DESIGN.md: a p2m entry changes
// under the memory manager's rules). A present entry may be cached in any
// vCPU's TLB and may be in use by a device's DMA on an I/O thread, so the
// manager changes one only when:
//   1. every vCPU of the VM is off its pCPU (ManagedVm.holdVcpus), and each
//      hart flushes its TLB before it runs again (releaseVcpus);
//   2. the entry is claimed BUSY by compare-and-swap, so a thread arriving
//      later waits instead of using the old frame;
//   3. no host accessor is inside an access (P2m.activeAccessors) after the
//      claim: one that entered before could still be copying into the frame.
// What cannot be had (a vCPU that will not stop because the VM is going
// away, an accessor inside) makes the batch give up and put every entry back
// as it was; the caller tries again later.

import { Absent, P2M_ACCESSED, absentEntry } from "../p2m-entry.js";
import type { P2m } from "../p2m.js";

const BUSY = absentEntry(Absent.Busy);

/** A VM as the memory manager sees it. */
export interface ManagedVm {
  readonly name: string;
  /** The main thread's P2m object of the VM's RAM. */
  readonly p2m: P2m;
  /** VMs share pages only with VMs of the same group. */
  readonly shareGroup: string;
  /** Take every vCPU off its pCPU and keep it off; false when the VM stopped meanwhile. */
  holdVcpus(): Promise<boolean>;
  /** Let the vCPUs run again (if the VM is running), every hart's TLB flushed first. */
  releaseVcpus(): void;
}

/** One entry to change: which, and what it was when chosen. */
export interface Claim {
  readonly vm: ManagedVm;
  readonly index: number;
  /** The entry as seen when chosen. */
  readonly seen: number;
  /** Accept the entry with its ACCESSED bit set since (the guest reading it
   *  does not matter to a merge; it does to the clock, which wants cold pages). */
  readonly ignoreAccessed?: boolean;
  /** The entry as claimed (set by claimAll). */
  was?: number;
}

/** Hold the VMs, claim the entries, and run `work` with the claims that were
 *  still as seen. `work` must store a final value in every claimed entry
 *  (finish() or putBack()). Resolves false when the batch could not be held. */
export async function withClaims(claims: Claim[], work: (claimed: Claim[]) => void): Promise<boolean> {
  const vms = [...new Set(claims.map((c) => c.vm))];
  let done = false;
  await withVcpusHeld(vms, () => {
    const claimed: Claim[] = [];
    for (const c of claims) {
      const now = c.vm.p2m.entry(c.index);
      const same = c.ignoreAccessed ? (now & ~P2M_ACCESSED) === (c.seen & ~P2M_ACCESSED) : now === c.seen;
      if (same && c.vm.p2m.casEntry(c.index, now, BUSY)) {
        c.was = now;
        claimed.push(c);
      }
    }
    if (vms.some((vm) => vm.p2m.activeAccessors > 0)) {
      for (const c of claimed) putBack(c);
      return;
    }
    work(claimed);
    done = true;
  });
  return done;
}

/** Run `work` with every vCPU of `vms` off its pCPU; each hart flushes its
 *  TLB before it runs again. Resolves false (work not run) when a VM stopped. */
export async function withVcpusHeld(vms: readonly ManagedVm[], work: () => void): Promise<boolean> {
  const held: ManagedVm[] = [];
  try {
    for (const vm of vms) {
      if (!(await vm.holdVcpus())) return false;
      held.push(vm);
    }
    work();
    return true;
  } finally {
    for (const vm of held) vm.releaseVcpus();
  }
}

/** Store the claimed entry's new value. */
export function finish(c: Claim, entry: number): void {
  if (!c.vm.p2m.casEntry(c.index, BUSY, entry)) throw new Error(`p2m entry ${c.index} of VM '${c.vm.name}' changed while claimed`);
}

/** Give the claimed entry back as it was. */
export function putBack(c: Claim): void {
  finish(c, c.was!);
}
