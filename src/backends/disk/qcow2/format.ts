// qcow2 on-disk constants and the encoding of L1, L2 and refcount table
// entries (QEMU docs/interop/qcow2.txt: "Header", "Host cluster management",
// "Cluster mapping"). Entries are 64-bit big-endian; they are decoded here
// from two 32-bit halves so the hot paths need no BigInt. Host offsets use
// bits 9-55, well inside a JS number's exact range.

export const QCOW2_MAGIC = 0x514649fb; // "QFI\xfb"

export const MIN_CLUSTER_BITS = 9; // 512 B
export const MAX_CLUSTER_BITS = 21; // 2 MiB, QEMU's implementation limit
export const DEFAULT_CLUSTER_BITS = 16; // 64 KiB

/** QEMU's implementation limits, also tsvisor's bounds on what it allocates. */
export const MAX_L1_BYTES = 32 << 20;
export const MAX_REFCOUNT_TABLE_BYTES = 8 << 20;
export const MAX_SNAPSHOTS = 65536;
export const MAX_BACKING_FILE_NAME = 1023;
/** Longest backing chain followed (also stops chains QEMU would refuse). */
export const MAX_BACKING_DEPTH = 64;

// incompatible_features
export const INCOMPAT_DIRTY = 1n << 0n;
export const INCOMPAT_CORRUPT = 1n << 1n;
export const INCOMPAT_DATA_FILE = 1n << 2n;
export const INCOMPAT_COMPRESSION = 1n << 3n;
export const INCOMPAT_EXTL2 = 1n << 4n;
export const INCOMPAT_KNOWN = (1n << 5n) - 1n;
// compatible_features
export const COMPAT_LAZY_REFCOUNTS = 1n << 0n;
// autoclear_features
export const AUTOCLEAR_BITMAPS = 1n << 0n;
export const AUTOCLEAR_DATA_FILE_RAW = 1n << 1n;

// Header extension types
export const EXT_END = 0x00000000;
export const EXT_BACKING_FORMAT = 0xe2792aca;
export const EXT_FEATURE_TABLE = 0x6803f857;
export const EXT_BITMAPS = 0x23852875;
export const EXT_CRYPTO_HEADER = 0x0537be77;
export const EXT_DATA_FILE = 0x44415441;

const TWO32 = 0x1_0000_0000;

/** Bits 9-55 of an entry (L1, standard L2, refcount table): a cluster-aligned host offset. */
export function entryOffset(hi: number, lo: number): number {
  return (hi & 0x00ff_ffff) * TWO32 + ((lo & 0xffff_fe00) >>> 0);
}

// L1 entry: bits 9-55 offset of the L2 table, 63 "copied" (refcount is exactly
// one); 0-8 and 56-62 reserved.
export const L1_RESERVED_HI = 0x7f00_0000;
export const L1_RESERVED_LO = 0x0000_01ff;

// L2 entry: bit 63 copied, 62 compressed; standard cluster descriptor: bit 0
// reads-as-zero (version 3), 1-8 reserved, 9-55 host offset, 56-61 reserved.
export const L2_COPIED_HI = 0x8000_0000;
export const L2_COMPRESSED_HI = 0x4000_0000;
export const L2_STD_RESERVED_HI = 0x3f00_0000;
export const L2_STD_RESERVED_LO = 0x0000_01fe;
export const L2_ZERO_LO = 0x1;

/** What a guest cluster is, from its L2 entry. */
export type ClusterKind =
  | { kind: "unallocated" } // reads from the backing file, or zeros
  | { kind: "zero"; offset: number; copied: boolean } // reads zeros; offset != 0 is a preallocated host cluster
  | { kind: "normal"; offset: number; copied: boolean }
  | { kind: "compressed"; offset: number; length: number }; // byte range holding the deflate stream

/** Writes a 64-bit entry made of a host offset (< 2^56) and flag bits. */
export function putEntry(view: DataView, at: number, offset: number, flagsHi: number, flagsLo: number): void {
  view.setUint32(at, ((Math.floor(offset / TWO32) & 0x00ff_ffff) | flagsHi) >>> 0);
  view.setUint32(at + 4, ((offset % TWO32) | flagsLo) >>> 0);
}

/** Decodes a compressed cluster descriptor (bits 0-61; x = 62 - (cluster_bits - 8)):
 *  bits 0..x-1 host offset, x..61 number of additional 512-byte sectors. */
export function compressedDescriptor(hi: number, lo: number, clusterBits: number): { offset: number; sectors: number } {
  const d = (BigInt(hi & 0x3fff_ffff) << 32n) | BigInt(lo >>> 0);
  const x = BigInt(62 - (clusterBits - 8));
  const offset = Number(d & ((1n << x) - 1n));
  const sectors = Number(d >> x) + 1;
  return { offset, sectors };
}

export function hex(n: number): string {
  return "0x" + n.toString(16);
}
