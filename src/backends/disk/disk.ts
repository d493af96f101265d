// Disk images for block devices: opening an image file as a DiskImage (raw or
// qcow2, the format given or probed from the magic), following qcow2 backing
// chains, and parsing disk sizes. The interface itself is in types.ts.

import { realpathSync } from "node:fs";
import { HostFile } from "./host-file.js";
import { RawImage, QCOW2_MAGIC } from "./raw.js";
import { Qcow2Image } from "./qcow2/image.js";
import { MAX_BACKING_DEPTH } from "./qcow2/format.js";
import { DiskImageError, type DiskImage, type DiskOpenOptions } from "./types.js";

export { DiskImageError, checkRange, type CacheMode, type DiskImage, type DiskOpenOptions } from "./types.js";
export { Qcow2Image } from "./qcow2/image.js";
export { RawImage } from "./raw.js";

/** "raw" or "qcow2" from the first bytes of the file (raw unless the qcow2 magic is there). */
export function probeFormat(path: string): "raw" | "qcow2" {
  const file = HostFile.open(path, true);
  try {
    const head = new Uint8Array(4);
    const n = file.pread(head, 0);
    return n === 4 && head.every((b, i) => b === QCOW2_MAGIC[i]) ? "qcow2" : "raw";
  } finally {
    file.close();
  }
}

export function openDisk(path: string, opts: DiskOpenOptions = {}): DiskImage {
  return openInChain(path, opts, []);
}

function openInChain(path: string, opts: DiskOpenOptions, chain: string[]): DiskImage {
  let real: string;
  try {
    real = realpathSync(path);
  } catch {
    real = path; // HostFile.open says why
  }
  if (chain.includes(real)) throw new DiskImageError(`${path}: the backing chain loops (${[...chain, real].join(" -> ")})`);
  if (chain.length > MAX_BACKING_DEPTH) throw new DiskImageError(`${path}: the backing chain is longer than ${MAX_BACKING_DEPTH} images`);
  const format = opts.format ?? probeFormat(path);
  const readOnly = opts.readOnly ?? false;
  const cache = opts.cache ?? "writeback";
  if (format === "raw") return new RawImage(path, readOnly, cache, opts.format === undefined);
  if (format !== "qcow2") throw new DiskImageError(`${path}: unknown format '${String(format)}' (raw or qcow2)`);
  return Qcow2Image.open(path, {
    readOnly,
    cache,
    openBacking: (backingPath, backingFormat) => {
      try {
        return openInChain(backingPath, { format: backingFormat, readOnly: true, cache }, [...chain, real]);
      } catch (e) {
        if (e instanceof DiskImageError && !e.message.startsWith(`${path}: `)) {
          throw new DiskImageError(`${path}: backing file: ${e.message}`);
        }
        throw e;
      }
    },
  });
}

const UNITS: Record<string, number> = { "": 1, b: 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50, e: 2 ** 60 };

/** "10G", "512M", "4096", "1.5G", "64k" -> bytes (binary units, as qemu-img). */
export function parseSize(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([bkmgtpe]?)(?:ib)?$/i.exec(text.trim());
  if (!m || (m[2] === "" && /ib$/i.test(text.trim()))) throw new DiskImageError(`invalid size '${text}' (e.g. 10G, 512M, 4096)`);
  const n = Number(m[1]) * UNITS[m[2].toLowerCase()];
  if (!Number.isSafeInteger(n)) {
    throw new DiskImageError(Number.isInteger(n) ? `size '${text}' is too large` : `size '${text}' is not a whole number of bytes`);
  }
  return n;
}
