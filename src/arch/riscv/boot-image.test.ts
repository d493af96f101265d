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
