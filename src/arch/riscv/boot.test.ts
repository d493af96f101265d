// Where the boot loader puts kernel, initrd and device tree in guest RAM.
import { test } from "node:test";
import assert from "node:assert/strict";
import { planBoot, BootLayoutError } from "./boot.js";
import type { KernelImage } from "./boot-image.js";

const MiB = 1n << 20n;
const RAM = 0x8000_0000n;
const kernel = (imageSize: bigint): KernelImage => ({ bytes: new Uint8Array(16), textOffset: 2n * MiB, imageSize, version: "0.2", packaging: "Image" });

test("kernel at RAM + text_offset, device tree on a 2 MiB boundary at the top, initrd below it", () => {
  const l = planBoot(RAM, 512n * MiB, kernel(32n * MiB), 10_000_000, 4000);
  assert.equal(l.kernelAddr, RAM + 2n * MiB);
  assert.equal(l.kernelEnd, RAM + 34n * MiB);
  assert.equal(l.fdtAddr, RAM + 510n * MiB);
  assert.ok(l.initrd);
  assert.equal(l.initrd.end - l.initrd.start, 10_000_000n);
  assert.equal(l.initrd.start % 4096n, 0n);
  assert.ok(l.initrd.end <= l.fdtAddr);
  assert.ok(l.initrd.start >= l.kernelEnd);
});

test("without an initrd there is none in the layout", () => {
  assert.equal(planBoot(RAM, 128n * MiB, kernel(8n * MiB), undefined, 4000).initrd, undefined);
});

test("memory too small for kernel and initrd, or an initrd larger than memory, is refused with sizes", () => {
  assert.throws(() => planBoot(RAM, 64n * MiB, kernel(32n * MiB), 20 << 20, 4000), (e: unknown) =>
    e instanceof BootLayoutError && /--mem 64.0 MiB is too small for this kernel \(32.0 MiB\) and initrd \(20.0 MiB\): it needs at least 86/.test(e.message));
  assert.throws(() => planBoot(RAM, 64n * MiB, kernel(8n * MiB), 100 << 20, 4000), (e: unknown) =>
    e instanceof BootLayoutError && /initrd \(100.0 MiB\) is larger than guest memory/.test(e.message));
});
