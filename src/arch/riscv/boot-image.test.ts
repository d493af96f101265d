// The kernel image header parser, on images laid out as the RISC-V boot
// protocol describes them, packaged the ways distributions ship them.
import { test } from "node:test";
import assert from "node:assert/strict";
import { gzipSync } from "node:zlib";
import { parseKernelImage, KernelImageError } from "./boot-image.js";

/** A minimal Image: header fields at their documented offsets, then a body. */
function image(opts: { textOffset?: bigint; imageSize?: bigint; flags?: bigint; bodyBytes?: number; noMagic?: boolean } = {}): Uint8Array {
  const bytes = new Uint8Array(0x40 + (opts.bodyBytes ?? 0x1000));
  const dv = new DataView(bytes.buffer);
  bytes.set([0x4d, 0x5a]); // "MZ": an EFI-stub kernel, as Debian's
  dv.setBigUint64(0x08, opts.textOffset ?? 0x200000n, true);
  dv.setBigUint64(0x10, opts.imageSize ?? 0x20000n, true);
  dv.setBigUint64(0x18, opts.flags ?? 0n, true);
  dv.setUint32(0x20, 2, true); // version 0.2
  if (!opts.noMagic) {
    bytes.set(new TextEncoder().encode("RISCV\0\0\0"), 0x30);
    bytes.set(new TextEncoder().encode("RSC\x05"), 0x38);
  }
  bytes[0x1000] = 0xaa; // a recognisable body byte
  return bytes;
}

function zboot(payload: Uint8Array, method: string): Uint8Array {
  const header = new Uint8Array(0x200);
  const dv = new DataView(header.buffer);
  header.set([0x4d, 0x5a]);
  header.set(new TextEncoder().encode("zimg"), 4);
  dv.setUint32(8, header.length, true);
  dv.setUint32(12, payload.length, true);
  header.set(new TextEncoder().encode(method), 0x18);
  const out = new Uint8Array(header.length + payload.length);
  out.set(header);
  out.set(payload, header.length);
  return out;
}

const fails = (bytes: Uint8Array, pattern: RegExp) => assert.throws(() => parseKernelImage(bytes), (e: unknown) => e instanceof KernelImageError && pattern.test(e.message));

test("an uncompressed EFI-stub Image gives its load offset, size and version", () => {
  const k = parseKernelImage(image());
  assert.equal(k.textOffset, 0x200000n);
  assert.equal(k.imageSize, 0x20000n);
  assert.equal(k.version, "0.2");
  assert.equal(k.packaging, "Image");
  assert.equal(k.bytes[0x1000], 0xaa);
});

test("gzip-compressed and EFI zboot (gzip) images are unpacked to the same Image", () => {
  const plain = image();
  const gz = parseKernelImage(gzipSync(plain));
  assert.equal(gz.packaging, "gzip");
  assert.deepEqual(gz.bytes, plain);
  const z = parseKernelImage(zboot(gzipSync(plain), "gzip"));
  assert.equal(z.packaging, "zboot-gzip");
  assert.deepEqual(z.bytes, plain);
});

test("an image_size of 0 (header 0.1) falls back to the file size", () => {
  const k = parseKernelImage(image({ imageSize: 0n }));
  assert.equal(k.imageSize, BigInt(k.bytes.length));
});

test("images that are not bootable RISC-V kernels are refused with a reason", () => {
  fails(new Uint8Array(10), /too short/);
  fails(image({ noMagic: true }), /not a RISC-V Linux kernel image/);
  const arm = image({ noMagic: true });
  arm.set(new TextEncoder().encode("ARM\x64"), 0x38);
  fails(arm, /arm64/);
  fails(Uint8Array.from([0x7f, 0x45, 0x4c, 0x46, ...new Array(100).fill(0)]), /ELF vmlinux/);
  fails(image({ flags: 1n }), /big-endian/);
  fails(image({ textOffset: 0x123n }), /text_offset/);
  fails(image({ imageSize: 0x100n }), /corrupt/);
  fails(image({ imageSize: 1n << 40n }), /corrupt/);
  fails(Uint8Array.from([0x1f, 0x8b, 8, 0, 1, 2, 3]), /cannot decompress/);
  fails(zboot(new Uint8Array(16), "zstd22"), /zstd22.*only gzip/);
  const truncated = zboot(gzipSync(image()), "gzip");
  new DataView(truncated.buffer).setUint32(12, 1 << 30, true);
  fails(truncated, /outside the file/);
});

/**
 * An EFI-stub Image laid out as Debian's (arch/riscv/kernel/efi-header.S):
 * "PE\0\0" at 0x40, a 160-byte PE32+ optional header, then .text and .data,
 * .data's raw data ending at the end of the file; image_size adds bss.
 */
function efiImage(): Uint8Array {
  const text = 0x1000, data = 0x3000, end = 0x5000;
  const bytes = image({ imageSize: BigInt(end + 0x2000), bodyBytes: end - 0x40 });
  const dv = new DataView(bytes.buffer);
  dv.setUint32(0x3c, 0x40, true);
  bytes.set(new TextEncoder().encode("PE\0\0"), 0x40);
  dv.setUint16(0x40 + 4, 0x5064, true); // IMAGE_FILE_MACHINE_RISCV64
  dv.setUint16(0x40 + 6, 2, true); // NumberOfSections
  dv.setUint16(0x40 + 20, 160, true); // SizeOfOptionalHeader
  dv.setUint16(0x40 + 24, 0x20b, true); // PE32+
  const section = (i: number, name: string, at: number, size: number) => {
    const s = 0x40 + 24 + 160 + 40 * i;
    bytes.set(new TextEncoder().encode(name), s);
    dv.setUint32(s + 8, size, true); // VirtualSize
    dv.setUint32(s + 12, at, true); // VirtualAddress
    dv.setUint32(s + 16, size, true); // SizeOfRawData
    dv.setUint32(s + 20, at, true); // PointerToRawData
  };
  section(0, ".text", text, data - text);
  section(1, ".data", data, end - data);
  return bytes;
}

test("an EFI-stub Image cut short of what its PE sections hold is refused with both sizes", () => {
  const whole = efiImage();
  assert.equal(parseKernelImage(whole).bytes.length, 0x5000);
  // A signature appended after the sections is no harm.
  const signed = new Uint8Array(whole.length + 0x100);
  signed.set(whole);
  assert.equal(parseKernelImage(signed).bytes.length, 0x5100);
  fails(whole.slice(0, whole.length / 2), /^kernel image is cut short: its PE header says the file holds 20480 bytes, it has 10240$/);
  fails(whole.slice(0, whole.length - 1), /cut short.* 20480 bytes, it has 20479$/);
  // Cut inside the section table itself.
  fails(whole.slice(0, 0x100), /cut short/);
  // gzip-packed, the unpacked Image is checked the same way.
  fails(gzipSync(whole.slice(0, 0x4000)), /cut short/);
});
