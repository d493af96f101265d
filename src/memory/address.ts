// Addresses in the two address spaces the hypervisor juggles.
//
// A GuestAddress is a guest-physical address (what the guest's page tables
// produce, what devices and the ELF loader see): 64 bits wide, so a bigint.
// A HostAddress is a byte offset inside the host frame pool's WebAssembly memory
// (at most 4 GiB, so a plain number is exact). The aliases document which space
// a value lives in; frames are 4 KiB in both.

export type GuestAddress = bigint;
export type HostAddress = number;

export const PAGE_SHIFT = 12;
/** 4 KiB: the RISC-V base page (privileged spec, section 4.3). */
export const PAGE_SIZE = 1 << PAGE_SHIFT;
const PAGE_SHIFT_N = BigInt(PAGE_SHIFT);
const PAGE_MASK_N = BigInt(PAGE_SIZE - 1);

/** The guest frame number (page index) holding `addr`. */
export function guestFrameOf(addr: GuestAddress): bigint {
  return addr >> PAGE_SHIFT_N;
}

/** Offset of `addr` inside its 4 KiB page. */
export function pageOffsetOf(addr: GuestAddress): number {
  return Number(addr & PAGE_MASK_N);
}

export function isPageAligned(addr: bigint | number): boolean {
  return (BigInt(addr) & PAGE_MASK_N) === 0n;
}

/** Lower-case hex with a 0x prefix, as tsvisor prints addresses everywhere. */
export function hex(value: bigint | number): string {
  return "0x" + BigInt(value).toString(16);
}
