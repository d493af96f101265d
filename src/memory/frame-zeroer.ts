// Zeroing host memory with WebAssembly's memory.fill, a native memset.
//
// TypedArray.prototype.fill on a SharedArrayBuffer is slow in V8: it may not
// hand a shared buffer to C++'s memset (other threads may be using it), so it
// stores byte by byte, 1.3 us per 4 KiB frame. memory.fill on the same memory
// takes 0.07 us. The frame pool zeroes every frame it gets back, and a VM's
// destruction gives back all of its RAM at once, so this matters.

/** A module that imports a shared memory (any size up to 4 GiB) and exports
 *  zero(address, length) = memory.fill(address, 0, length). Hand-assembled:
 *  it is 65 bytes, and a compiler for it would be a dependency. */
const ZERO_MODULE = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // "\0asm", version 1
  0x01, 0x06, 0x01, 0x60, 0x02, 0x7f, 0x7f, 0x00, // type section: (i32, i32) -> ()
  0x02, 0x12, 0x01, // import section, one import:
  0x03, 0x65, 0x6e, 0x76, 0x06, 0x6d, 0x65, 0x6d, 0x6f, 0x72, 0x79, // "env" "memory"
  0x02, 0x03, 0x01, 0x80, 0x80, 0x04, // a memory, shared, min 1 page, max 65536 pages
  0x03, 0x02, 0x01, 0x00, // function section: one function of type 0
  0x07, 0x08, 0x01, 0x04, 0x7a, 0x65, 0x72, 0x6f, 0x00, 0x00, // export "zero" = function 0
  0x0a, 0x0d, 0x01, 0x0b, 0x00, // code section, one body, no locals:
  0x20, 0x00, 0x41, 0x00, 0x20, 0x01, // local.get 0, i32.const 0, local.get 1
  0xfc, 0x0b, 0x00, 0x0b, // memory.fill, end
]);

import { createRequire } from "node:module";
import { join } from "node:path";
import { projectRoot } from "../project-root.js";

let compiled: WebAssembly.Module | undefined;

/** zero(address, length) over `memory` (a shared WebAssembly memory). It sees
 *  the memory's current size, growth included; out of bounds it throws. */
export function frameZeroer(memory: WebAssembly.Memory): (address: number, length: number) => void {
  compiled ??= new WebAssembly.Module(ZERO_MODULE);
  const instance = new WebAssembly.Instance(compiled, { env: { memory } });
  return instance.exports.zero as (address: number, length: number) => void;
}

// ---- giving free frames' pages back to the kernel ----------------------------------------

interface ReleaseAddon {
  release(buffer: SharedArrayBuffer, offset: number, length: number): number;
}

let addon: ReleaseAddon | null | undefined;

/** build/release-pages.node (src/memory/native/), if it was built and works here. */
function loadAddon(): ReleaseAddon | undefined {
  if (addon !== undefined) return addon ?? undefined;
  addon = null;
  try {
    const path = join(projectRoot(), "build", "release-pages.node");
    const a = createRequire(import.meta.url)(path) as ReleaseAddon;
    // The pages must read as zero afterwards (an anonymous private mapping,
    // as V8 reserves WebAssembly memory on Linux): check once, on a scratch memory.
    const scratch = new WebAssembly.Memory({ initial: 2, maximum: 2, shared: true });
    const bytes = new Uint8Array(scratch.buffer);
    bytes.fill(0xa5);
    if (a.release(scratch.buffer as unknown as SharedArrayBuffer, 65536, 4096) !== 0) return undefined;
    if (bytes[65536] !== 0 || bytes[65536 + 4095] !== 0 || bytes[65535] !== 0xa5 || bytes[65536 + 4096] !== 0xa5) return undefined;
    addon = a;
  } catch {
    // Not built (no C++ compiler or Node headers), another platform, or a
    // page size that is not 4 KiB: frames are zeroed instead.
  }
  return addon ?? undefined;
}

/**
 * release(address, length) over `memory`: the pages of [address, address +
 * length) go back to the kernel and read as zero from then on, so the
 * process's resident memory falls (DESIGN.md: reclaimed memory leaves the
 * process where the platform allows). Undefined where that cannot be done.
 * Returns false when the kernel refused (the caller zeroes instead).
 */
export function frameReleaser(memory: WebAssembly.Memory): ((address: number, length: number) => boolean) | undefined {
  const a = loadAddon();
  if (!a) return undefined;
  return (address, length) => {
    try {
      return a.release(memory.buffer as unknown as SharedArrayBuffer, address, length) === 0;
    } catch {
      return false;
    }
  };
}
