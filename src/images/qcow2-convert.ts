// A raw disk image copied into a new qcow2 image (as `qemu-img convert -O
// qcow2`), with tsvisor's own qcow2 writer: only clusters holding a non-zero
// byte are written, so the unused part of a file system costs nothing.

import { closeSync, fstatSync, fsyncSync, openSync, readSync } from "node:fs";
import { openDisk } from "../backends/disk/disk.js";
import { createQcow2 } from "../backends/disk/qcow2/create.js";

const CHUNK = 64 * 1024; // the qcow2 cluster size createQcow2 uses by default

/** Writes `raw`'s contents into a new qcow2 image at `dest` (which must not exist); returns the bytes copied. */
export function rawToQcow2(raw: string, dest: string, progress?: (done: number, total: number) => void): number {
  const fd = openSync(raw, "r");
  try {
    const size = fstatSync(fd).size;
    const virtualSize = Math.ceil(size / 512) * 512;
    createQcow2(dest, { size: virtualSize });
    const disk = openDisk(dest, { format: "qcow2", cache: "unsafe" });
    let copied = 0;
    try {
      const buf = new Uint8Array(CHUNK);
      let lastReport = 0;
      for (let off = 0; off < size; off += CHUNK) {
        const n = readSync(fd, buf, 0, Math.min(CHUNK, size - off), off);
        const chunk = n === CHUNK ? buf : buf.subarray(0, Math.ceil(n / 512) * 512).fill(0, n);
        if (!isZero(chunk)) {
          disk.write(off, chunk);
          copied += chunk.length;
        }
        if (progress && off - lastReport >= 256 * 2 ** 20) {
          lastReport = off;
          progress(off, size);
        }
      }
      disk.flush();
    } finally {
      disk.close();
    }
    // "unsafe" skipped the barriers between metadata writes (nothing reads
    // the image before it is complete); one fsync makes all of it durable.
    const out = openSync(dest, "r+");
    try {
      fsyncSync(out);
    } finally {
      closeSync(out);
    }
    return copied;
  } finally {
    closeSync(fd);
  }
}

function isZero(b: Uint8Array): boolean {
  const words = new BigUint64Array(b.buffer, b.byteOffset, b.length >> 3);
  for (let i = 0; i < words.length; i++) if (words[i] !== 0n) return false;
  for (let i = words.length << 3; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}
