// The MMIO bus: devices occupy half-open guest-physical ranges [base, base+size)
// that must not overlap, and see only offsets into their own range (like Cloud
// Hypervisor's BusDevice), so a device model never learns where it is mapped.

export interface MmioDevice {
  /** Short name used in exit statistics ("uart", "clint", ...). */
  readonly name: string;
  read(offset: number, size: number): bigint;
  write(offset: number, size: number, value: bigint): void;
}

export interface BusRange {
  base: bigint;
  size: bigint;
  device: MmioDevice;
}

export class BusOverlapError extends Error {}

export class MmioBus {
  private ranges: BusRange[] = [];

  register(base: bigint, size: bigint, device: MmioDevice): void {
    if (size <= 0n) throw new Error(`device ${device.name}: empty MMIO range`);
    for (const r of this.ranges) {
      if (base < r.base + r.size && r.base < base + size) {
        throw new BusOverlapError(
          `device ${device.name} at 0x${base.toString(16)} overlaps ${r.device.name} at 0x${r.base.toString(16)}`,
        );
      }
    }
    this.ranges.push({ base, size, device });
    this.ranges.sort((a, b) => (a.base < b.base ? -1 : 1));
  }

  /** The device and offset for `addr`, or undefined where no device is. An access
   *  must lie entirely inside one device's range. */
  find(addr: bigint, size: number): { device: MmioDevice; offset: number } | undefined {
    for (const r of this.ranges) {
      if (addr >= r.base && addr + BigInt(size) <= r.base + r.size) return { device: r.device, offset: Number(addr - r.base) };
    }
    return undefined;
  }
}
