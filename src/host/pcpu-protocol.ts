// What the main thread and the pCPU workers tell each other besides the
// shared tables: VMs coming and going, and questions only a worker can
// answer (its translation cache's counts). Messages travel on a
// MessagePort the worker drains with receiveMessageOnPort whenever it
// wakes, so a worker that sleeps in Atomics.wait still gets them.

import type { PageStoreHandle } from "../memory/manager/page-store.js";
import type { DoorbellArea } from "../vmm/queue-doorbell.js";
import type { JitOptions, JitStats } from "../jit/jit.js";
import type { P2mHandle } from "../memory/p2m.js";
import type { IrqchipArea } from "../vmm/virt-machine.js";

/** Host monotonic time in nanoseconds, the same clock on every thread
 *  (CLOCK_MONOTONIC; performance.now() has a per-thread origin). */
export function monoNs(): number {
  return Number(process.hrtime.bigint());
}

/** A VM as a worker needs to know it: plain data, cloned to every worker. */
export interface VmDescriptor {
  /** The VM's slot in the scheduler's table. */
  id: number;
  /** The frame pool owner its frames are charged to. */
  owner: number;
  p2m: P2mHandle;
  /** Host addresses of its hart blocks, by hart index. */
  harts: number[];
  /** Their vCPU slots in the scheduler, by hart index. */
  vcpus: number[];
  /** process.hrtime.bigint() when the VM's clock read 0. */
  clockStartNs: bigint;
  jit: JitOptions | false;
  /** The VM's page map of translated code (shared by every worker's cache). */
  pageMap: number;
  /** Its virtio queue doorbells (vmm/queue-doorbell.ts). */
  doorbells: DoorbellArea | undefined;
  /** The host's page store, where faults find compressed and swapped pages. */
  pages: PageStoreHandle | undefined;
  /** Its PLIC, when the worker answers the vCPU's accesses to it (vmm/virt-machine.ts irqchip). */
  irqchip: IrqchipArea | undefined;
}

export type PcpuMessage =
  | { kind: "add-vm"; vm: VmDescriptor }
  | { kind: "drop-vm"; id: number; token: number }
  | { kind: "jit-stats"; id: number; token: number }
  | { kind: "quit" };

export type PcpuReply =
  | { kind: "dropped"; id: number; token: number }
  | { kind: "jit-stats"; token: number; stats: JitStats | undefined }
  /** Not from a worker: the pool's answer for a worker that died meanwhile. */
  | { kind: "gone"; token: number };
