// Addresses in the two address spaces the hypervisor juggles.
//
// A GuestAddress is a guest-physical address (what the guest's page tables
// produce, what devices and the ELF loader see). It is 64 bits wide, so it is a
// bigint, branded so that a host offset can never be passed where a guest
// address is expected by accident.
//
// A HostAddress is a byte offset inside the host frame pool's WebAssembly memory
// (at most 4 GiB, so a plain number is exact).

export type GuestAddress = bigint & { readonly __guestAddress: unique symbol };
export type HostAddress = number;

export const PAGE_SHIFT = 12;
export const PAGE_SIZE = 1 << PAGE_SHIFT; // 4 KiB: the RISC-V base page (privileged spec 4.3)
const U64_MASK = (1n << 64n) - 1n;

/** A guest-physical address from any 64-bit quantity (wrapped to 64 bits). */
export function guestAddress(value: bigint | number): GuestAddress {
  return (BigInt(value) & U64_MASK) as GuestAddress;
}

/** The guest frame number (page index) holding `addr`. */
export function guestFrameOf(addr: GuestAddress): bigint {
  return addr >> BigInt(PAGE_SHIFT);
}

export function pageOffsetOf(addr: GuestAddress): number {
  return Number(addr & BigInt(PAGE_SIZE - 1));
}

/** Lower-case hex with a 0x prefix, as every message in tsvisor prints addresses. */
export function hex(value: bigint | number): string {
  return "0x" + BigInt(value).toString(16);
}

/** A half-open range [start, end) of guest-physical addresses. */
export interface GuestRange {
  readonly start: GuestAddress;
  readonly end: bigint; // may be 2^64 for a range that ends at the top of the address space
}

export function rangeToString(r: GuestRange): string {
  return `[${hex(r.start)}, ${hex(r.end)})`;
}

export function rangeContains(r: GuestRange, start: bigint, length: bigint): boolean {
  return start >= r.start && length >= 0n && start + length <= r.end;
}
