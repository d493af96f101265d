// A FUSE client for tests: it puts requests on a virtio-fs device's queues as
// Linux's virtiofs driver does (fuse_in_header + arguments readable, room for
// the reply writable) through the test virtio driver, and decodes replies.
// Being test code it also sends what no driver would (the fuzz and escape
// tests).

import { TestDriver, testGuestMemory } from "../test-driver.js";
import { VirtioFs } from "./device.js";
import { Op, OutWriter, ArgReader, Errno } from "./fuse.js";

export interface Reply {
  error: number;
  body: Uint8Array;
  len: number;
}

export interface Entry {
  nodeid: bigint;
  ino: bigint;
  size: bigint;
  mode: number;
  nlink: number;
}

export class FuseClient {
  readonly driver: TestDriver;
  private unique = 1n;

  /** On a new driver that starts the device, or on `driver` (one restored from a snapshot: TestDriver.snapshotInto). */
  constructor(readonly device: VirtioFs, driver?: TestDriver) {
    if (driver) {
      this.driver = driver;
      return;
    }
    this.driver = new TestDriver(device, testGuestMemory(16 << 20), { heapEnd: 0x8000_0000n + BigInt(15 << 20) });
    this.driver.start(undefined, 128);
  }

  /** A raw request on `queue`: the bytes as given, `outLen` writable bytes; the used length and what was written. */
  raw(queue: number, req: Uint8Array, outLen: number): { len: number; out: Uint8Array } {
    const buffers = outLen > 0 ? [{ data: req }, { writeLen: outLen }] : [{ data: req }];
    const head = this.driver.add(queue, buffers);
    this.driver.kick(queue);
    const used = this.driver.used(queue);
    const mine = used.find((u) => u.id === head);
    if (!mine) throw new Error(`request ${head} not completed`);
    const out = outLen > 0 && mine.len > 0 ? this.driver.mem.read(this.driver.bufferAddr(queue, head, 1), Math.min(mine.len, outLen)) : new Uint8Array(0);
    return { len: mine.len, out };
  }

  /** One request: header with `nodeid`, then `args`. */
  call(opcode: number, nodeid: bigint | number, args: Uint8Array = new Uint8Array(0), outLen = 4096, opts: { uid?: number; gid?: number; queue?: number; len?: number } = {}): Reply {
    const w = new OutWriter();
    const unique = this.unique++;
    w.u32(opts.len ?? 40 + args.length).u32(opcode).u64(unique).u64(BigInt(nodeid)).u32(opts.uid ?? 0).u32(opts.gid ?? 0).u32(1).u16(0).u16(0).bytes(args);
    const { len, out } = this.raw(opts.queue ?? 1, w.bytesWritten, outLen);
    if (len === 0) return { error: NaN, body: new Uint8Array(0), len };
    const dv = new DataView(out.buffer, out.byteOffset, out.byteLength);
    if (dv.getUint32(0, true) !== len) throw new Error(`reply len ${dv.getUint32(0, true)} but used len ${len}`);
    if (dv.getBigUint64(8, true) !== unique) throw new Error("reply for another request");
    return { error: dv.getInt32(4, true), body: out.subarray(16), len };
  }

  init(): Reply {
    return this.call(Op.INIT, 0, new OutWriter().u32(7).u32(38).u32(128 * 1024).u32(0x3fff_ffff).u32(0).zeros(44).bytesWritten);
  }

  lookup(parent: bigint | number, name: string): Reply {
    return this.call(Op.LOOKUP, parent, cstr(name));
  }

  /** LOOKUP that must succeed. */
  entry(parent: bigint | number, name: string): Entry {
    const r = this.lookup(parent, name);
    if (r.error) throw new Error(`lookup ${name}: ${r.error}`);
    return parseEntry(r.body);
  }

  open(node: bigint, flags: number): Reply {
    return this.call(Op.OPEN, node, new OutWriter().u32(flags).u32(0).bytesWritten);
  }

  fh(r: Reply): bigint {
    if (r.error) throw new Error(`open failed: ${r.error}`);
    return new DataView(r.body.buffer, r.body.byteOffset).getBigUint64(0, true);
  }

  read(node: bigint, fh: bigint, offset: number, size: number, outLen = size + 16): Reply {
    return this.call(Op.READ, node, new OutWriter().u64(fh).u64(offset).u32(size).u32(0).u64(0).u32(0).u32(0).bytesWritten, outLen);
  }

  write(node: bigint, fh: bigint, offset: number, data: Uint8Array): Reply {
    return this.call(Op.WRITE, node, new OutWriter().u64(fh).u64(offset).u32(data.length).u32(0).u64(0).u32(0).u32(0).bytes(data).bytesWritten);
  }

  release(node: bigint, fh: bigint, dir = false): Reply {
    return this.call(dir ? Op.RELEASEDIR : Op.RELEASE, node, new OutWriter().u64(fh).u32(0).u32(0).u64(0).bytesWritten);
  }

  create(parent: bigint | number, name: string, mode = 0o644, flags = 2): Reply {
    return this.call(Op.CREATE, parent, new OutWriter().u32(flags).u32(0o100000 | mode).u32(0).u32(0).bytes(cstr(name)).bytesWritten);
  }

  mkdir(parent: bigint | number, name: string, mode = 0o755): Reply {
    return this.call(Op.MKDIR, parent, new OutWriter().u32(mode).u32(0).bytes(cstr(name)).bytesWritten);
  }

  symlink(parent: bigint | number, name: string, target: string): Reply {
    return this.call(Op.SYMLINK, parent, concat(cstr(name), cstr(target)));
  }

  forget(node: bigint, n: number): Reply {
    return this.call(Op.FORGET, node, new OutWriter().u64(n).bytesWritten, 0, { queue: 0 });
  }

  /** READDIR(PLUS) through a fresh handle: every entry's name and type. */
  list(dir: bigint | number, plus = false): { name: string; type: number; nodeid: bigint }[] {
    const fh = this.fh(this.call(Op.OPENDIR, dir, new OutWriter().u32(0).u32(0).bytesWritten));
    const out: { name: string; type: number; nodeid: bigint }[] = [];
    let offset = 0n;
    for (;;) {
      const r = this.call(plus ? Op.READDIRPLUS : Op.READDIR, dir, new OutWriter().u64(fh).u64(offset).u32(4096).u32(0).u64(0).u32(0).u32(0).bytesWritten, 4096 + 16);
      if (r.error) throw new Error(`readdir: ${r.error}`);
      if (r.body.length === 0) break;
      const a = new ArgReader(r.body);
      while (a.left > 0) {
        const nodeid = plus ? parseEntry(a.bytesOf(128)).nodeid : 0n;
        a.u64();
        offset = a.u64();
        const namelen = a.u32(), type = a.u32();
        const name = Buffer.from(a.bytesOf(namelen)).toString("latin1");
        a.skip((8 - ((24 + namelen) % 8)) % 8);
        out.push({ name, type, nodeid });
      }
    }
    this.release(BigInt(dir), fh, true);
    return out;
  }
}

/** A LOOKUP that found nothing: ENOENT, or node id 0 (a negative entry the driver may cache). */
export function missing(r: Reply): boolean {
  return r.error === -Errno.ENOENT || (r.error === 0 && r.body.length >= 8 && parseEntry(r.body).nodeid === 0n);
}

export function cstr(s: string): Uint8Array {
  return concat(Buffer.from(s, "latin1"), Uint8Array.of(0));
}

export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export function parseEntry(b: Uint8Array): Entry {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  return { nodeid: dv.getBigUint64(0, true), ino: dv.getBigUint64(40, true), size: dv.getBigUint64(48, true), mode: dv.getUint32(40 + 60, true), nlink: dv.getUint32(40 + 64, true) };
}

/** fuse_attr_out's attributes. */
export function parseAttrOut(b: Uint8Array): { ino: bigint; size: bigint; mode: number; uid: number; gid: number; mtime: bigint; atime: bigint } {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const a = 16;
  return { ino: dv.getBigUint64(a, true), size: dv.getBigUint64(a + 8, true), atime: dv.getBigUint64(a + 24, true), mtime: dv.getBigUint64(a + 32, true), mode: dv.getUint32(a + 60, true), uid: dv.getUint32(a + 68, true), gid: dv.getUint32(a + 72, true) };
}
