// Where the kernel, initrd and device tree go in guest RAM, and the state the
// boot hart starts in (Documentation/arch/riscv/boot.rst):
//   - the Image at a 2 MiB-aligned address plus its text_offset;
//   - a0 = hart ID, a1 = physical address of the device tree (8-byte aligned);
//   - S-mode, satp = 0 (MMU off), interrupts off.
// The placement follows QEMU's riscv boot code: the device tree at the top of
// RAM on a 2 MiB boundary, the initrd below it, so neither is clobbered while the
// kernel sets itself up at the bottom.

import type { KernelImage } from "./boot-image.js";

export class BootLayoutError extends Error {}

export interface BootLayout {
  kernelAddr: bigint;
  kernelEnd: bigint;
  initrd?: { start: bigint; end: bigint };
  fdtAddr: bigint;
}

const MiB = 1n << 20n;
const PAGE = 4096n;
/** RAM the kernel needs beyond its image to get to userspace at all. */
export const KERNEL_HEADROOM = 32n * MiB;

const alignDown = (v: bigint, a: bigint) => v - (v % a);
const alignUp = (v: bigint, a: bigint) => alignDown(v + a - 1n, a);
const mib = (v: bigint) => `${(Number(v) / (1 << 20)).toFixed(1)} MiB`;

export function planBoot(ramBase: bigint, ramSize: bigint, kernel: KernelImage, initrdSize: number | undefined, fdtSize: number): BootLayout {
  const ramEnd = ramBase + ramSize;
  const kernelAddr = alignUp(ramBase, 2n * MiB) + kernel.textOffset;
  const kernelEnd = kernelAddr + kernel.imageSize;
  const fdtAddr = alignDown(ramEnd - BigInt(fdtSize), 2n * MiB);
  let initrd: BootLayout["initrd"];
  let freeEnd = fdtAddr;
  if (initrdSize !== undefined) {
    const start = alignDown(fdtAddr - BigInt(initrdSize), PAGE);
    if (start < ramBase) throw new BootLayoutError(`the initrd (${mib(BigInt(initrdSize))}) is larger than guest memory (${mib(ramSize)}); raise --mem`);
    initrd = { start, end: start + BigInt(initrdSize) };
    freeEnd = start;
  }
  const needed = kernelEnd + KERNEL_HEADROOM;
  if (fdtAddr < ramBase || needed > freeEnd) {
    const total = kernel.imageSize + BigInt(initrdSize ?? 0) + KERNEL_HEADROOM + 2n * MiB;
    throw new BootLayoutError(
      `--mem ${mib(ramSize)} is too small for this kernel (${mib(kernel.imageSize)})` +
        (initrdSize !== undefined ? ` and initrd (${mib(BigInt(initrdSize))})` : "") +
        `: it needs at least ${mib(alignUp(total, MiB))}`,
    );
  }
  return { kernelAddr, kernelEnd, initrd, fdtAddr };
}
