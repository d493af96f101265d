// Creating an empty qcow2 version 3 image (QEMU docs/interop/qcow2.txt:
// "Header", "Host cluster management", "Cluster mapping").
//
// Layout: cluster 0 the header (with the backing file name and extensions),
// then the refcount table, the refcount blocks describing every cluster
// written here, and the L1 table (all entries zero: nothing allocated).

import { unlinkSync } from "node:fs";
import { HostFile } from "../host-file.js";
import { DiskImageError } from "../types.js";
import { buildHeader } from "./header.js";
import { DEFAULT_CLUSTER_BITS, MIN_CLUSTER_BITS, MAX_CLUSTER_BITS, MAX_L1_BYTES, MAX_REFCOUNT_TABLE_BYTES, putEntry } from "./format.js";

export interface CreateOptions {
  /** Virtual size in bytes: a multiple of 512. */
  size: number;
  /** Default 65536. */
  clusterSize?: number;
  /** 0..6, default 4 (16-bit refcounts). */
  refcountOrder?: number;
  /** Stored as given; a relative name is resolved from the new image's directory. */
  backingFile?: string;
  backingFormat?: "raw" | "qcow2";
}

export function clusterBitsOf(clusterSize: number): number {
  const bits = Math.log2(clusterSize);
  if (!Number.isInteger(bits) || bits < MIN_CLUSTER_BITS || bits > MAX_CLUSTER_BITS) {
    throw new DiskImageError(`cluster size ${clusterSize} is invalid: a power of two from 512 to 2M`);
  }
  return bits;
}

/** Creates `path` (which must not exist). */
export function createQcow2(path: string, opts: CreateOptions): void {
  const clusterBits = opts.clusterSize !== undefined ? clusterBitsOf(opts.clusterSize) : DEFAULT_CLUSTER_BITS;
  const refcountOrder = opts.refcountOrder ?? 4;
  if (!Number.isInteger(refcountOrder) || refcountOrder < 0 || refcountOrder > 6) throw new DiskImageError(`refcount order ${refcountOrder} is invalid (0..6)`);
  const { size } = opts;
  if (!Number.isSafeInteger(size) || size <= 0) throw new DiskImageError(`${path}: invalid size ${size}`);
  if (size % 512 !== 0) throw new DiskImageError(`${path}: the size must be a multiple of 512 bytes`);
  const cs = 2 ** clusterBits;
  const l2Entries = cs / 8;
  const l1Size = Math.ceil(size / (cs * l2Entries));
  if (l1Size * 8 > MAX_L1_BYTES) throw new DiskImageError(`${path}: ${size} bytes is too large for ${cs}-byte clusters (try a larger cluster size)`);
  const l1Clusters = Math.ceil((l1Size * 8) / cs);
  const epb = (cs * 8) / 2 ** refcountOrder;
  let k = 1; // refcount table clusters
  let m = 1; // refcount blocks
  for (;;) {
    const total = 1 + k + m + l1Clusters;
    const m2 = Math.ceil(total / epb);
    const k2 = Math.ceil((m2 * 8) / cs);
    if (m2 === m && k2 === k) break;
    m = m2;
    k = k2;
  }
  if (k * cs > MAX_REFCOUNT_TABLE_BYTES) throw new DiskImageError(`${path}: ${size} bytes is too large for ${cs}-byte clusters`);
  const total = 1 + k + m + l1Clusters;
  const tableAt = 1;
  const blocksAt = 1 + k;
  const l1At = 1 + k + m;

  const header = buildHeader({
    cluster_bits: clusterBits,
    size,
    l1_size: l1Size,
    l1_table_offset: l1At * cs,
    refcount_table_offset: tableAt * cs,
    refcount_table_clusters: k,
    refcount_order: refcountOrder,
    backingFile: opts.backingFile,
    backingFormat: opts.backingFile !== undefined ? opts.backingFormat : undefined,
  });
  const table = new Uint8Array(k * cs);
  const tv = new DataView(table.buffer);
  for (let j = 0; j < m; j++) putEntry(tv, 8 * j, (blocksAt + j) * cs, 0, 0);
  const blocks = new Uint8Array(m * cs);
  const bits = 2 ** refcountOrder;
  for (let c = 0; c < total; c++) {
    // refcount 1, big-endian within its entry; sub-byte entries from the least significant bit
    if (bits >= 8) blocks[Math.floor(c / epb) * cs + ((c % epb) + 1) * (bits / 8) - 1] = 1;
    else {
      const bit = (c % epb) * bits;
      blocks[Math.floor(c / epb) * cs + (bit >> 3)] |= 1 << (bit & 7);
    }
  }

  const file = HostFile.create(path);
  try {
    file.pwrite(table, tableAt * cs);
    file.pwrite(blocks, blocksAt * cs);
    file.truncate(total * cs); // the L1 table: zeros
    file.pwrite(header, 0);
    file.sync();
  } catch (e) {
    file.close();
    try {
      unlinkSync(path);
    } catch {
      // it may not exist
    }
    throw e;
  }
  file.close();
}
