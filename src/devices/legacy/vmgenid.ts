// Virtual Machine Generation ID (Microsoft's VMGenID specification; Linux's
// drivers/virt/vmgenid.c with the devicetree binding rng/microsoft,vmgenid):
// a 128-bit identifier that changes whenever the VM may have been duplicated
// or rolled back (a restore from a snapshot, a clone). Linux reads it at boot
// and again on the device's interrupt, and when it changed it reseeds its
// random number generator (add_vmfork_randomness) and tells user space, so
// clones of one snapshot never hand out the same random numbers.
//
//   0x00..0x0f  the generation ID, read-only (any access size)
//
// The interrupt is a level line raised by newGeneration() and lowered when
// the guest reads the ID: the driver's interrupt handler reads it, which is
// the only acknowledgement the binding gives.

import { randomBytes } from "node:crypto";
import type { MmioDevice } from "../../bus/mmio-bus.js";
import { bytes, type Plain, type StateReader } from "../../snapshot/state.js";

export const VMGENID_ID_BYTES = 16;

export interface VmGenIdHost {
  setIrq(level: boolean): void;
}

export class VmGenId implements MmioDevice {
  readonly name = "vmgenid";
  private id: Uint8Array = randomBytes(VMGENID_ID_BYTES);
  private irq = false;
  /** Generations since the machine was built (restores, clones). */
  generations = 0;

  constructor(private readonly host: VmGenIdHost) {}

  read(offset: number, size: number): bigint {
    if (offset < 0 || offset + size > VMGENID_ID_BYTES) return 0n;
    if (this.irq) this.setIrq(false);
    let v = 0n;
    for (let i = size - 1; i >= 0; i--) v = (v << 8n) | BigInt(this.id[offset + i]);
    return v;
  }

  /** The ID is the host's to change. */
  write(): void {}

  /** The VM may now be one of several copies: a new ID, and tell the guest. */
  newGeneration(): void {
    this.id = randomBytes(VMGENID_ID_BYTES);
    this.generations++;
    this.setIrq(true);
  }

  private setIrq(level: boolean): void {
    this.irq = level;
    this.host.setIrq(level);
  }

  saveState(): Plain {
    return { id: bytes(this.id), irq: this.irq };
  }

  /** The saved ID, so the guest sees no change until newGeneration(). */
  restoreState(r: StateReader): void {
    const id = r.bytes("id", VMGENID_ID_BYTES);
    r.check(id.length === VMGENID_ID_BYTES, `${VMGENID_ID_BYTES} ID bytes expected`);
    const irq = r.bool("irq");
    this.id = id;
    this.setIrq(irq);
  }
}
