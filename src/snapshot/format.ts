// The snapshot file: a header, a table of sections, the sections.
//
//   0     "TSVISNAP"  magic
//   8     u32 format version (FORMAT_VERSION)
//   12    u32 number of sections (at most MAX_SECTIONS)
//   16    section table, 32 bytes each: tag (8 bytes ASCII, zero-padded),
//         u64 offset, u64 length, u32 CRC-32 of the section's bytes,
//         u32 flags (PER_PAGE_CRC: the section is guest pages, each with its
//         own CRC in the page map, read lazily so restore time does not grow
//         with memory size)
//   ...   u32 CRC-32 of everything above (header and table)
//   4096  the sections, each starting 4096-aligned
//
// All integers little-endian. Every number read back is checked against the
// file's size before it is used: a snapshot is untrusted input.

// fs.promises, read when first used: node:fs/promises took 1.6 ms of every
// start that restores a snapshot, which needs none of it.
import { promises as fsp, fstatSync, openSync, readSync, closeSync } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import { resolve as resolvePath } from "node:path";
import { crc32 } from "./crc32.js";
import { SnapshotError, type Plain } from "./state.js";

export const MAGIC = "TSVISNAP";
/** Raised whenever the layout of the file or of any section changes. */
export const FORMAT_VERSION = 1;
const MAX_SECTIONS = 64;
const ENTRY_SIZE = 32;
const TABLE_OFF = 16;
export const DATA_ALIGN = 4096;
const FLAG_PER_PAGE_CRC = 1;
/** A JSON section larger than this is not a snapshot of ours. */
const MAX_JSON_BYTES = 64 << 20;

export interface Section {
  tag: string;
  offset: number;
  length: number;
  crc: number;
  perPageCrc: boolean;
}

/** Writes a snapshot to `path` + ".partial", renamed into place by finish(),
 *  so a crash or a full disk never leaves a file that looks complete. */
export class SnapshotWriter {
  private readonly sections: Section[] = [];
  private at = DATA_ALIGN;

  private constructor(private readonly file: FileHandle, readonly path: string, private readonly partial: string) {}

  static async create(path: string): Promise<SnapshotWriter> {
    const partial = `${path}.partial`;
    try {
      return new SnapshotWriter(await fsp.open(partial, "w", 0o600), path, partial);
    } catch (e) {
      throw new SnapshotError(`cannot write ${path}: ${(e as Error).message}`);
    }
  }

  get bytesWritten(): number {
    return this.at;
  }

  async json(tag: string, value: Plain): Promise<void> {
    await this.binary(tag, new TextEncoder().encode(JSON.stringify(value)));
  }

  async binary(tag: string, data: Uint8Array): Promise<void> {
    const s = this.begin(tag, false);
    await this.write(data);
    s.crc = crc32(data);
    this.end(s);
  }

  /** A section written piece by piece (guest pages): `crc` of the whole when not per page. */
  begin(tag: string, perPageCrc: boolean): Section {
    if (tag.length === 0 || tag.length > 8 || !/^[a-z0-9-]+$/.test(tag)) throw new Error(`bad section tag '${tag}'`);
    if (this.sections.length >= MAX_SECTIONS) throw new Error("too many sections");
    const s: Section = { tag, offset: this.at, length: 0, crc: 0, perPageCrc };
    this.sections.push(s);
    return s;
  }

  async write(data: Uint8Array): Promise<void> {
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this.file.write(data, done, data.length - done, this.at);
      done += bytesWritten;
      this.at += bytesWritten;
    }
  }

  end(s: Section): void {
    s.length = this.at - s.offset;
    this.at = Math.ceil(this.at / DATA_ALIGN) * DATA_ALIGN;
  }

  async finish(): Promise<void> {
    const head = new Uint8Array(TABLE_OFF + this.sections.length * ENTRY_SIZE + 4);
    const dv = new DataView(head.buffer);
    head.set(new TextEncoder().encode(MAGIC), 0);
    dv.setUint32(8, FORMAT_VERSION, true);
    dv.setUint32(12, this.sections.length, true);
    this.sections.forEach((s, i) => {
      const o = TABLE_OFF + i * ENTRY_SIZE;
      head.set(new TextEncoder().encode(s.tag), o);
      dv.setBigUint64(o + 8, BigInt(s.offset), true);
      dv.setBigUint64(o + 16, BigInt(s.length), true);
      dv.setUint32(o + 24, s.crc, true);
      dv.setUint32(o + 28, s.perPageCrc ? FLAG_PER_PAGE_CRC : 0, true);
    });
    dv.setUint32(head.length - 4, crc32(head.subarray(0, head.length - 4)), true);
    await this.file.write(head, 0, head.length, 0);
    await this.file.truncate(this.at);
    await this.file.sync();
    await this.file.close();
    await fsp.rename(this.partial, this.path);
  }

  /** Give up: remove the partial file. */
  async abort(): Promise<void> {
    await this.file.close().catch(() => {});
    await fsp.rm(this.partial, { force: true });
  }
}

/** A snapshot file opened for reading (synchronous: restore is short, and
 *  lazily loaded pages are read on vCPU threads by descriptor). */
export class SnapshotFile {
  readonly sections = new Map<string, Section>();

  private constructor(readonly path: string, readonly fd: number, readonly size: number) {}

  static open(path: string): SnapshotFile {
    let fd: number;
    try {
      fd = openSync(path, "r");
    } catch (e) {
      throw new SnapshotError(`cannot open snapshot ${path}: ${(e as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : (e as Error).message}`);
    }
    try {
      const f = new SnapshotFile(resolvePath(path), fd, fstatSync(fd).size);
      f.readTable();
      return f;
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  private readTable(): void {
    const fail = (why: string): never => {
      throw new SnapshotError(`${this.path} is not a usable snapshot: ${why}`);
    };
    if (this.size < TABLE_OFF + 4) fail(`${this.size} bytes, too short for a header`);
    const fixed = this.read(0, TABLE_OFF);
    if (new TextDecoder().decode(fixed.subarray(0, 8)) !== MAGIC) fail("no TSVISNAP magic (not a tsvisor snapshot)");
    const dv = new DataView(fixed.buffer, fixed.byteOffset);
    const version = dv.getUint32(8, true);
    if (version !== FORMAT_VERSION) fail(`snapshot format version ${version}; this tsvisor reads version ${FORMAT_VERSION}`);
    const count = dv.getUint32(12, true);
    if (count > MAX_SECTIONS) fail(`${count} sections, at most ${MAX_SECTIONS}`);
    const headLen = TABLE_OFF + count * ENTRY_SIZE + 4;
    if (this.size < headLen) fail("truncated in its section table");
    const head = this.read(0, headLen);
    const hv = new DataView(head.buffer, head.byteOffset);
    if (hv.getUint32(headLen - 4, true) !== crc32(head.subarray(0, headLen - 4))) fail("header checksum mismatch (corrupted)");
    for (let i = 0; i < count; i++) {
      const o = TABLE_OFF + i * ENTRY_SIZE;
      const tag = new TextDecoder().decode(head.subarray(o, o + 8)).replace(/\0+$/, "");
      const offset = Number(hv.getBigUint64(o + 8, true));
      const length = Number(hv.getBigUint64(o + 16, true));
      if (!/^[a-z0-9-]{1,8}$/.test(tag) || this.sections.has(tag)) fail(`bad or repeated section tag '${tag}'`);
      if (offset < headLen || offset + length > this.size) fail(`section '${tag}' lies outside the file (${this.size} bytes: truncated?)`);
      this.sections.set(tag, { tag, offset, length, crc: hv.getUint32(o + 24, true), perPageCrc: (hv.getUint32(o + 28, true) & FLAG_PER_PAGE_CRC) !== 0 });
    }
  }

  has(tag: string): boolean {
    return this.sections.has(tag);
  }

  section(tag: string): Section {
    const s = this.sections.get(tag);
    if (!s) throw new SnapshotError(`${this.path}: no '${tag}' section`);
    return s;
  }

  /** A whole section, its checksum verified. */
  binary(tag: string, maxBytes = MAX_JSON_BYTES): Uint8Array {
    const s = this.section(tag);
    if (s.perPageCrc) throw new SnapshotError(`${this.path}: section '${tag}' is pages, not one block`);
    if (s.length > maxBytes) throw new SnapshotError(`${this.path}: section '${tag}' is ${s.length} bytes, at most ${maxBytes}`);
    const data = this.read(s.offset, s.length);
    if (crc32(data) !== s.crc) throw new SnapshotError(`${this.path}: section '${tag}' checksum mismatch (corrupted)`);
    return data;
  }

  json(tag: string): unknown {
    const data = this.binary(tag);
    try {
      return JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(data));
    } catch (e) {
      throw new SnapshotError(`${this.path}: section '${tag}' is not valid JSON: ${(e as Error).message}`);
    }
  }

  read(offset: number, length: number): Uint8Array {
    const out = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const n = readSync(this.fd, out, done, length - done, offset + done);
      if (n === 0) throw new SnapshotError(`${this.path}: truncated at byte ${offset + done}`);
      done += n;
    }
    return out;
  }

  close(): void {
    closeSync(this.fd);
  }
}
