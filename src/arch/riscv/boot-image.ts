// The RISC-V Linux kernel image, as the boot loader sees it
// (Documentation/arch/riscv/boot-image-header.rst):
//
//   0x00 u32 code0, u32 code1   executable: "MZ" + jump when it is also an EFI stub
//   0x08 u64 text_offset        where in a 2 MiB-aligned block to load it
//   0x10 u64 image_size         bytes the kernel occupies once loaded (incl. bss)
//   0x18 u64 flags              bit 0: endianness (0 = little)
//   0x20 u32 version            major << 16 | minor (0.2 since Linux 5.x)
//   0x30 u64 magic              "RISCV\0\0\0" (deprecated, still written)
//   0x38 u32 magic2             "RSC\x05"
//   0x3c u32 res3               offset of the PE header (EFI stub)
//
// Distributions ship it as is (Debian: an EFI-stub Image named vmlinux-*), gzip
// compressed (Image.gz), or as an EFI "zboot" image: a PE whose payload is the
// compressed Image (drivers/firmware/efi/libstub/zboot-header.S: "zimg" at 4,
// payload offset and size at 8 and 12, compression name at 0x18).

import { gunzipSync } from "node:zlib";

export class KernelImageError extends Error {}

export interface KernelImage {
  /** The loadable Image, decompressed. */
  bytes: Uint8Array;
  textOffset: bigint;
  /** Memory the kernel needs from its load address (at least bytes.length). */
  imageSize: bigint;
  /** Header version, "major.minor". */
  version: string;
  /** How it was packaged: "Image", "gzip" or "zboot-gzip". */
  packaging: string;
}

const HEADER_SIZE = 0x40;
const MAGIC2 = 0x05435352; // "RSC\x05"
const MAX_TEXT_OFFSET = 64n << 20n;
const MAX_DECOMPRESSED = 512 << 20;

export function parseKernelImage(file: Uint8Array): KernelImage {
  if (file.length >= 2 && file[0] === 0x1f && file[1] === 0x8b) {
    return { ...parseRawImage(gunzip(file, "gzip-compressed kernel")), packaging: "gzip" };
  }
  const zboot = zbootPayload(file);
  if (zboot) return { ...parseRawImage(zboot), packaging: "zboot-gzip" };
  return { ...parseRawImage(file), packaging: "Image" };
}

function parseRawImage(file: Uint8Array): Omit<KernelImage, "packaging"> {
  if (file.length >= 4 && file[0] === 0x7f && file[1] === 0x45 && file[2] === 0x4c && file[3] === 0x46) {
    throw new KernelImageError("this is an ELF vmlinux; boot the Image file (arch/riscv/boot/Image) instead");
  }
  if (file.length < HEADER_SIZE) throw new KernelImageError(`too short for a kernel image (${file.length} bytes)`);
  const dv = new DataView(file.buffer, file.byteOffset, file.byteLength);
  if (dv.getUint32(0x38, true) !== MAGIC2 && ascii(file, 0x30, 5) !== "RISCV") {
    if (ascii(file, 0x38, 4) === "ARM\x64") throw new KernelImageError("this is an arm64 kernel image, not a RISC-V one");
    throw new KernelImageError("not a RISC-V Linux kernel image (no RISC-V boot header magic at offset 0x30)");
  }
  const textOffset = dv.getBigUint64(0x08, true);
  const imageSize = dv.getBigUint64(0x10, true);
  const flags = dv.getBigUint64(0x18, true);
  const version = dv.getUint32(0x20, true);
  if ((flags & 1n) !== 0n) throw new KernelImageError("big-endian kernel image: the RISC-V virt machine is little-endian");
  // Kernels ask for 2 MiB (RV64) past the start of RAM, room firmware once had;
  // an unaligned or huge offset is not a real header.
  if (textOffset >= MAX_TEXT_OFFSET || textOffset % 4096n !== 0n) {
    throw new KernelImageError(`kernel image header has an invalid text_offset 0x${textOffset.toString(16)}`);
  }
  // Version 0.1 headers may leave image_size 0: the file size is the best estimate then.
  const size = imageSize === 0n ? BigInt(file.length) : imageSize;
  if (size < BigInt(file.length)) {
    throw new KernelImageError(`kernel image header says ${imageSize} bytes but the file has ${file.length}: corrupt image`);
  }
  if (size > BigInt(MAX_DECOMPRESSED)) throw new KernelImageError(`kernel image claims ${size} bytes: corrupt image`);
  // image_size counts bss, which the file does not hold, so only an EFI-stub
  // image tells how long its file is: a cut-short one would boot into garbage.
  const fileSize = peFileSize(file, dv);
  if (fileSize !== undefined && file.length < fileSize) {
    throw new KernelImageError(`kernel image is cut short: its PE header says the file holds ${fileSize} bytes, it has ${file.length}`);
  }
  return { bytes: file, textOffset, imageSize: size, version: `${version >>> 16}.${version & 0xffff}` };
}

/**
 * The length of an EFI-stub Image's file as its PE/COFF headers give it
 * (Microsoft PE format: "PE\0\0" at the offset in 0x3c, the COFF header's
 * NumberOfSections and SizeOfOptionalHeader, then 40-byte section headers with
 * SizeOfRawData and PointerToRawData): the end of the last section's data
 * (arch/riscv/kernel/efi-header.S: .data's raw data ends at the end of the
 * Image). A signature may follow. Undefined when the image has no PE header.
 */
function peFileSize(file: Uint8Array, dv: DataView): number | undefined {
  if (file[0] !== 0x4d || file[1] !== 0x5a) return undefined; // "MZ"
  const pe = dv.getUint32(0x3c, true);
  if (pe < HEADER_SIZE || pe + 24 > file.length || ascii(file, pe, 4) !== "PE\0\0") return undefined;
  const sections = dv.getUint16(pe + 6, true);
  const table = pe + 24 + dv.getUint16(pe + 20, true);
  let end = table + 40 * sections;
  if (end > file.length) return end;
  for (let i = 0; i < sections; i++) {
    const at = table + 40 * i;
    const rawSize = dv.getUint32(at + 16, true);
    const rawPointer = dv.getUint32(at + 20, true);
    if (rawSize !== 0) end = Math.max(end, rawPointer + rawSize);
  }
  return end;
}

function zbootPayload(file: Uint8Array): Uint8Array | undefined {
  if (file.length < 0x40 || file[0] !== 0x4d || file[1] !== 0x5a || ascii(file, 4, 4) !== "zimg") return undefined;
  const dv = new DataView(file.buffer, file.byteOffset, file.byteLength);
  const offset = dv.getUint32(8, true);
  const size = dv.getUint32(12, true);
  const method = ascii(file, 0x18, 32).replace(/\0.*$/s, "");
  if (offset + size > file.length || size === 0) throw new KernelImageError("EFI zboot image: payload lies outside the file (corrupt image)");
  if (method !== "gzip") {
    throw new KernelImageError(`EFI zboot image compressed with ${method || "an unnamed method"}: only gzip is supported; boot the uncompressed Image`);
  }
  return gunzip(file.subarray(offset, offset + size), "EFI zboot payload");
}

function gunzip(data: Uint8Array, what: string): Uint8Array {
  try {
    return new Uint8Array(gunzipSync(data, { maxOutputLength: MAX_DECOMPRESSED }));
  } catch (e) {
    throw new KernelImageError(`${what}: cannot decompress (${(e as Error).message})`);
  }
}

function ascii(b: Uint8Array, off: number, len: number): string {
  return String.fromCharCode(...b.subarray(off, off + len));
}
