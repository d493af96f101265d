// The qcow2 header and its extensions (QEMU docs/interop/qcow2.txt: "Header",
// "Additional fields", "Header extensions", "Feature name table", "String
// header extensions", "Snapshots" for the snapshot table bounds).
//
// parseHeader validates every field against the file before anything is read
// or allocated from it: offsets aligned and inside the file, table sizes
// within QEMU's implementation limits, features tsvisor does not implement
// refused with a message that names them.

import { DiskImageError } from "../types.js";
import {
  QCOW2_MAGIC, MIN_CLUSTER_BITS, MAX_CLUSTER_BITS, MAX_L1_BYTES, MAX_REFCOUNT_TABLE_BYTES, MAX_SNAPSHOTS,
  MAX_BACKING_FILE_NAME, INCOMPAT_DIRTY, INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE, INCOMPAT_COMPRESSION, INCOMPAT_EXTL2,
  INCOMPAT_KNOWN, EXT_END, EXT_BACKING_FORMAT, EXT_FEATURE_TABLE, EXT_BITMAPS, hex,
} from "./format.js";

export const V2_HEADER_LENGTH = 72;
export const V3_HEADER_LENGTH = 104;

export interface Qcow2Header {
  version: 2 | 3;
  backing_file_offset: number;
  backing_file_size: number;
  cluster_bits: number;
  size: number;
  crypt_method: number;
  l1_size: number;
  l1_table_offset: number;
  refcount_table_offset: number;
  refcount_table_clusters: number;
  nb_snapshots: number;
  snapshots_offset: number;
  incompatible_features: bigint;
  compatible_features: bigint;
  autoclear_features: bigint;
  refcount_order: number;
  header_length: number;
  compression_type: number;
  /** From the header extensions and the first cluster. */
  backingFile?: string;
  backingFormat?: string;
  /** Names of feature bits, "incompatible:5" -> "name" (feature name table). */
  featureNames: Map<string, string>;
  /** Where the bitmaps extension points, when present. */
  bitmaps?: { nb_bitmaps: number; bitmap_directory_size: number; bitmap_directory_offset: number };
}

/** Bytes enough to parse the header: the first cluster (at most 2 MiB). */
export function headerReadLength(first: Uint8Array, fileSize: number): number {
  if (first.length < 24) return 0;
  const bits = new DataView(first.buffer, first.byteOffset, first.byteLength).getUint32(20);
  const cs = bits >= MIN_CLUSTER_BITS && bits <= MAX_CLUSTER_BITS ? 2 ** bits : 1 << MIN_CLUSTER_BITS;
  return Math.min(cs, fileSize);
}

export interface ParseOptions {
  /** `tsvisor disk check`: accept the dirty and corrupt bits (the checker reports them). */
  forCheck?: boolean;
}

/** Parses and validates the header from the start of the file (`buf` holds
 *  the first cluster, or the whole file when it is shorter). */
export function parseHeader(path: string, buf: Uint8Array, fileSize: number, opts: ParseOptions = {}): Qcow2Header {
  const bad = (msg: string): never => {
    throw new DiskImageError(`${path}: ${msg}`);
  };
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  if (buf.length < V2_HEADER_LENGTH) bad("not a qcow2 image (file too short for the header)");
  if (v.getUint32(0) !== QCOW2_MAGIC) bad("not a qcow2 image (bad magic)");
  const version = v.getUint32(4);
  if (version !== 2 && version !== 3) bad(`unsupported qcow2 version ${version} (tsvisor reads versions 2 and 3)`);
  const u64 = (at: number): number => {
    const x = v.getBigUint64(at);
    // Offsets and sizes above 2^53 are not representable exactly; no valid image has them.
    return x > BigInt(Number.MAX_SAFE_INTEGER) ? Number.POSITIVE_INFINITY : Number(x);
  };
  const h: Qcow2Header = {
    version: version as 2 | 3,
    backing_file_offset: u64(8),
    backing_file_size: v.getUint32(16),
    cluster_bits: v.getUint32(20),
    size: u64(24),
    crypt_method: v.getUint32(32),
    l1_size: v.getUint32(36),
    l1_table_offset: u64(40),
    refcount_table_offset: u64(48),
    refcount_table_clusters: v.getUint32(56),
    nb_snapshots: v.getUint32(60),
    snapshots_offset: u64(64),
    incompatible_features: 0n,
    compatible_features: 0n,
    autoclear_features: 0n,
    refcount_order: 4,
    header_length: V2_HEADER_LENGTH,
    compression_type: 0,
    featureNames: new Map(),
  };

  if (h.cluster_bits < MIN_CLUSTER_BITS || h.cluster_bits > MAX_CLUSTER_BITS) {
    bad(`cluster_bits ${h.cluster_bits} is not supported (cluster sizes 512 B to 2 MiB)`);
  }
  const cs = 2 ** h.cluster_bits;
  if (buf.length < Math.min(cs, fileSize)) bad("internal: header buffer shorter than the first cluster");

  if (version === 3) {
    if (buf.length < V3_HEADER_LENGTH) bad("file too short for a version 3 header");
    h.incompatible_features = v.getBigUint64(72);
    h.compatible_features = v.getBigUint64(80);
    h.autoclear_features = v.getBigUint64(88);
    h.refcount_order = v.getUint32(96);
    h.header_length = v.getUint32(100);
    if (h.header_length < V3_HEADER_LENGTH || h.header_length % 8 !== 0 || h.header_length > Math.min(cs, buf.length)) {
      bad(`header_length ${h.header_length} is invalid`);
    }
    if (h.header_length > 104) h.compression_type = buf[104];
  }

  // Extensions come first: the feature name table makes the feature errors readable.
  parseExtensions(path, buf, h, cs, bad);

  const unknown = h.incompatible_features & ~INCOMPAT_KNOWN;
  if (unknown !== 0n) {
    const names: string[] = [];
    for (let bit = 0; bit < 64; bit++) {
      if ((unknown >> BigInt(bit)) & 1n) names.push(h.featureNames.get(`incompatible:${bit}`) ?? `bit ${bit}`);
    }
    bad(`uses unknown incompatible features: ${names.join(", ")}`);
  }
  if (h.incompatible_features & INCOMPAT_DATA_FILE) bad("uses an external data file, which tsvisor does not support");
  if (h.incompatible_features & INCOMPAT_EXTL2) bad("uses extended L2 entries (subclusters), which tsvisor does not support");
  if (h.incompatible_features & INCOMPAT_COMPRESSION) {
    bad(`uses compression type ${h.compression_type === 1 ? "zstd" : h.compression_type}; tsvisor reads zlib only`);
  }
  if (h.compression_type !== 0) bad(`compression_type ${h.compression_type} is set without its feature bit`);
  if (!opts.forCheck) {
    if (h.incompatible_features & INCOMPAT_CORRUPT) bad("is marked corrupt; repair it with 'qemu-img check -r all' first");
    if (h.incompatible_features & INCOMPAT_DIRTY) {
      bad("has the dirty bit set (lazy refcounts were not written back); repair it with 'qemu-img check -r all' first");
    }
  }
  if (h.crypt_method !== 0) bad(`is encrypted (crypt_method ${h.crypt_method}), which tsvisor does not support`);
  if (h.refcount_order > 6) bad(`refcount_order ${h.refcount_order} is invalid (at most 6)`);

  // Virtual size and L1 table.
  const l2Entries = cs / 8;
  if (!Number.isSafeInteger(h.size)) bad("virtual size is too large");
  const l1Needed = Math.ceil(h.size / (cs * l2Entries));
  if (h.l1_size < l1Needed) bad(`L1 table (${h.l1_size} entries) is too small for the virtual size ${h.size}`);
  if (h.l1_size * 8 > MAX_L1_BYTES) bad(`L1 table of ${h.l1_size} entries is larger than the 32 MiB limit`);
  if (h.l1_size > 0) checkTable(h.l1_table_offset, h.l1_size * 8, "L1 table", cs, fileSize, bad);

  // Refcount table.
  if (h.refcount_table_clusters === 0) bad("refcount table is empty");
  const rtBytes = h.refcount_table_clusters * cs;
  if (rtBytes > MAX_REFCOUNT_TABLE_BYTES) bad(`refcount table of ${h.refcount_table_clusters} clusters is larger than the 8 MiB limit`);
  checkTable(h.refcount_table_offset, rtBytes, "refcount table", cs, fileSize, bad);

  // Snapshot table: only its bounds here.
  if (h.nb_snapshots > MAX_SNAPSHOTS) bad(`too many snapshots (${h.nb_snapshots})`);
  if (h.nb_snapshots > 0) checkTable(h.snapshots_offset, 40 * h.nb_snapshots, "snapshot table", cs, fileSize, bad);

  // Backing file name: in the first cluster, after the extensions.
  if (h.backing_file_offset !== 0) {
    if (h.backing_file_size === 0 || h.backing_file_size > MAX_BACKING_FILE_NAME) bad(`backing file name length ${h.backing_file_size} is invalid`);
    if (h.backing_file_offset + h.backing_file_size > Math.min(cs, buf.length)) bad("backing file name is outside the first cluster");
    h.backingFile = new TextDecoder().decode(buf.subarray(h.backing_file_offset, h.backing_file_offset + h.backing_file_size));
    if (h.backingFile.includes("\0")) bad("backing file name contains a NUL byte");
  }
  return h;
}

function checkTable(offset: number, bytes: number, what: string, cs: number, fileSize: number, bad: (m: string) => never): void {
  if (!Number.isSafeInteger(offset) || offset % cs !== 0 || offset === 0) bad(`${what} offset ${hex(offset)} is invalid (zero or not cluster-aligned)`);
  if (offset + bytes > fileSize) bad(`${what} at ${hex(offset)} (${bytes} bytes) is outside the file`);
}

function parseExtensions(path: string, buf: Uint8Array, h: Qcow2Header, cs: number, bad: (m: string) => never): void {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  // The extension area ends where the backing file name starts, else at the end of the first cluster.
  let end = Math.min(cs, buf.length);
  if (h.backing_file_offset !== 0 && h.backing_file_offset < end) end = h.backing_file_offset;
  let at = h.header_length;
  const seen = new Set<number>();
  while (at + 8 <= end) {
    const type = v.getUint32(at);
    const len = v.getUint32(at + 4);
    if (type === EXT_END) return;
    const data = at + 8;
    if (len > end - data) bad(`header extension ${hex(type)} is longer than the header cluster`);
    if (seen.has(type)) bad(`header extension ${hex(type)} appears twice`);
    seen.add(type);
    const bytes = buf.subarray(data, data + len);
    if (type === EXT_BACKING_FORMAT) {
      h.backingFormat = new TextDecoder().decode(bytes);
    } else if (type === EXT_FEATURE_TABLE) {
      const kinds = ["incompatible", "compatible", "autoclear"];
      for (let e = 0; e + 48 <= len; e += 48) {
        const kind = kinds[bytes[e]];
        if (!kind || bytes[e + 1] > 63) continue;
        const raw = bytes.subarray(e + 2, e + 48);
        const nul = raw.indexOf(0);
        h.featureNames.set(`${kind}:${bytes[e + 1]}`, new TextDecoder().decode(nul < 0 ? raw : raw.subarray(0, nul)));
      }
    } else if (type === EXT_BITMAPS && len >= 24) {
      const bv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      const dirOffset = Number(bv.getBigUint64(16) & 0x1f_ffff_ffff_ffffn);
      const dirSize = Number(bv.getBigUint64(8) & 0x1f_ffff_ffff_ffffn);
      h.bitmaps = { nb_bitmaps: bv.getUint32(0), bitmap_directory_size: dirSize, bitmap_directory_offset: dirOffset };
    }
    // Unknown extensions are skipped (the spec allows it).
    at = data + Math.ceil(len / 8) * 8;
  }
  void path;
}

/** Fields tsvisor writes when it creates an image. */
export interface NewHeader {
  cluster_bits: number;
  size: number;
  l1_size: number;
  l1_table_offset: number;
  refcount_table_offset: number;
  refcount_table_clusters: number;
  refcount_order: number;
  backingFile?: string;
  backingFormat?: string;
}

const FEATURE_NAMES: [number, number, string][] = [
  [0, 0, "dirty bit"],
  [0, 1, "corrupt bit"],
  [0, 2, "external data file"],
  [0, 3, "compression type"],
  [0, 4, "extended L2 entries"],
  [1, 0, "lazy refcounts"],
  [2, 0, "bitmaps"],
  [2, 1, "raw external data"],
];

/** A version 3 header cluster (header_length 112, zlib compression), with
 *  the backing format and, when it fits, the feature name table. */
export function buildHeader(n: NewHeader): Uint8Array {
  const cs = 2 ** n.cluster_bits;
  const buf = new Uint8Array(cs);
  const v = new DataView(buf.buffer);
  const enc = new TextEncoder();
  const backing = n.backingFile !== undefined ? enc.encode(n.backingFile) : undefined;
  const format = n.backingFormat !== undefined ? enc.encode(n.backingFormat) : undefined;
  v.setUint32(0, QCOW2_MAGIC);
  v.setUint32(4, 3);
  v.setUint32(20, n.cluster_bits);
  v.setBigUint64(24, BigInt(n.size));
  v.setUint32(32, 0);
  v.setUint32(36, n.l1_size);
  v.setBigUint64(40, BigInt(n.l1_table_offset));
  v.setBigUint64(48, BigInt(n.refcount_table_offset));
  v.setUint32(56, n.refcount_table_clusters);
  v.setUint32(96, n.refcount_order);
  v.setUint32(100, 112);
  // byte 104: compression_type 0 (zlib); 105..111 padding
  let at = 112;
  const ext = (type: number, data: Uint8Array) => {
    v.setUint32(at, type);
    v.setUint32(at + 4, data.length);
    buf.set(data, at + 8);
    at += 8 + Math.ceil(data.length / 8) * 8;
  };
  if (format) ext(EXT_BACKING_FORMAT, format);
  const table = new Uint8Array(48 * FEATURE_NAMES.length);
  FEATURE_NAMES.forEach(([kind, bit, name], i) => {
    table[48 * i] = kind;
    table[48 * i + 1] = bit;
    table.set(enc.encode(name), 48 * i + 2);
  });
  const tail = 8 + (backing?.length ?? 0);
  if (at + 8 + table.length + tail <= cs) ext(EXT_FEATURE_TABLE, table);
  at += 8; // end of extensions (type 0, length 0)
  if (backing) {
    if (backing.length > MAX_BACKING_FILE_NAME) throw new DiskImageError(`backing file name is longer than ${MAX_BACKING_FILE_NAME} bytes`);
    if (at + backing.length > cs) throw new DiskImageError("backing file name does not fit in the header cluster");
    v.setBigUint64(8, BigInt(at));
    v.setUint32(16, backing.length);
    buf.set(backing, at);
  }
  return buf;
}

// Header fields tsvisor rewrites in place.
export const HEADER_REFCOUNT_TABLE_AT = 48; // refcount_table_offset (8) + refcount_table_clusters (4): one 12-byte write
export const HEADER_AUTOCLEAR_AT = 88;
