// Seeded fuzz of the virtio-fs device from a hostile driver: well-formed
// requests with hostile values, lying lengths, random bytes, unknown opcodes,
// huge sizes, tiny reply buffers, node ids and handles never handed out.
// Every request gets a well-formed reply or none, never a throw; nothing
// outside the share changes; the tables stay bounded.
// TSVISOR_FUZZ_SEED=N picks the seed (printed on failure), TSVISOR_FUZZ_STEPS the length.

import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { VirtioFs } from "./device.js";
import { FuseClient, cstr, concat } from "./test-client.js";
import { Errno, Op, OutWriter } from "./fuse.js";
import { Rand } from "../fuzz-harness.js";
import { MAX_WRITE } from "./server.js";

const SEED = Number(process.env.TSVISOR_FUZZ_SEED ?? 20261206);
const STEPS = Number(process.env.TSVISOR_FUZZ_STEPS ?? 4000);

const NAMES = ["a", "b", "sub", "f", "..", ".", "", "a/b", "../out", "x".repeat(300), "lnk", "\u00e9t\u00e9", "secret", "abs", "fifo"];
const OPS = [
  Op.LOOKUP, Op.FORGET, Op.GETATTR, Op.SETATTR, Op.READLINK, Op.SYMLINK, Op.MKNOD, Op.MKDIR, Op.UNLINK, Op.RMDIR, Op.RENAME,
  Op.LINK, Op.OPEN, Op.READ, Op.WRITE, Op.STATFS, Op.RELEASE, Op.FSYNC, Op.FLUSH, Op.INIT, Op.OPENDIR, Op.READDIR, Op.RELEASEDIR,
  Op.FSYNCDIR, Op.ACCESS, Op.CREATE, Op.BATCH_FORGET, Op.FALLOCATE, Op.READDIRPLUS, Op.RENAME2, Op.LSEEK, Op.DESTROY,
  Op.GETXATTR, Op.SETLK, Op.INTERRUPT, Op.COPY_FILE_RANGE, 7, 19, 1000, 0xffff_ffff,
];
const ERRNOS = new Set<number>(Object.values(Errno));

function snapshotTree(dir: string): string {
  // Everything but the share itself (whose names the fuzz makes of any bytes).
  const paths = fs.readdirSync(dir).filter((p) => p !== "share").flatMap((p) => [p, ...(fs.lstatSync(join(dir, p)).isDirectory() ? fs.readdirSync(join(dir, p), { recursive: true, encoding: "utf8" }).map((q) => join(p, q)) : [])]);
  return paths.sort().map((p) => {
    const st = fs.lstatSync(join(dir, p));
    return `${p} ${st.mode} ${st.size} ${st.isFile() ? fs.readFileSync(join(dir, p), "latin1") : ""}`;
  }).join("\n");
}

test(`virtio-fs fuzz: ${STEPS} hostile requests (seed ${SEED})`, () => {
  const r = new Rand(SEED);
  const outside = fs.mkdtempSync(join(tmpdir(), "tsvisor-fs-fuzz-"));
  fs.writeFileSync(join(outside, "secret"), "outside");
  fs.mkdirSync(join(outside, "secretdir"));
  const dir = join(outside, "share");
  fs.mkdirSync(join(dir, "sub"), { recursive: true });
  fs.writeFileSync(join(dir, "f"), "content");
  fs.symlinkSync(join(outside, "secretdir"), join(dir, "abs"));
  fs.symlinkSync("../secret", join(dir, "lnk"));
  const before = snapshotTree(outside);

  const c = new FuseClient(new VirtioFs({ tag: "fuzz", hostDir: dir, thread: "main" }));
  const nodes: bigint[] = [1n];
  const handles: bigint[] = [1n, 2n];
  const pickNode = () => r.weighted<bigint>([[6, r.pick(nodes)], [1, r.u64()], [1, 0n], [1, BigInt(r.int(50))]]);
  const pickFh = () => r.weighted<bigint>([[6, r.pick(handles)], [1, r.u64()], [1, BigInt(r.int(20))]]);
  const name = () => r.chance(0.1) ? Buffer.from(r.bytes(r.int(20))).toString("latin1") : r.pick(NAMES);
  c.init();

  for (let step = 0; step < STEPS; step++) {
    const ctx = `seed ${SEED} step ${step}`;
    const op = r.pick(OPS);
    let args: Uint8Array;
    switch (op) {
      case Op.LOOKUP: case Op.UNLINK: case Op.RMDIR: args = cstr(name()); break;
      case Op.MKDIR: args = concat(new OutWriter().u32(r.u32()).u32(0).bytesWritten, cstr(name())); break;
      case Op.MKNOD: args = concat(new OutWriter().u32(r.pick([0o100644, 0o010600, 0o020600, 0o140777, r.u32()])).u32(r.u32()).u32(0).u32(0).bytesWritten, cstr(name())); break;
      case Op.CREATE: args = concat(new OutWriter().u32(r.pick([0, 1, 2, 0o1102, 0o302, r.u32()])).u32(r.u32()).u32(0).u32(0).bytesWritten, cstr(name())); break;
      case Op.SYMLINK: args = concat(cstr(name()), cstr(r.pick(["/etc/passwd", "../../..", "f", "x".repeat(r.int(5000))]))); break;
      case Op.RENAME: args = concat(new OutWriter().u64(pickNode()).bytesWritten, cstr(name()), cstr(name())); break;
      case Op.RENAME2: args = concat(new OutWriter().u64(pickNode()).u32(r.pick([0, 0, 1, 2, r.u32()])).u32(0).bytesWritten, cstr(name()), cstr(name())); break;
      case Op.LINK: args = concat(new OutWriter().u64(pickNode()).bytesWritten, cstr(name())); break;
      case Op.OPEN: case Op.OPENDIR: args = new OutWriter().u32(r.pick([0, 1, 2, 0o1000, 0o2002, r.u32()])).u32(0).bytesWritten; break;
      case Op.READ: case Op.READDIR: case Op.READDIRPLUS:
        args = new OutWriter().u64(pickFh()).u64(r.pick([0n, 1n, 2n, BigInt(r.int(300)), r.u64()])).u32(r.pick([0, 4096, r.u32(), 0xffff_ffff])).u32(0).u64(0).u32(0).u32(0).bytesWritten; break;
      case Op.WRITE: {
        const size = r.pick([0, 5, 4096, MAX_WRITE + 1, r.u32()]);
        const data = r.bytes(Math.min(size, r.chance(0.5) ? size : r.int(100), 8192));
        args = concat(new OutWriter().u64(pickFh()).u64(r.pick([0n, 3n, r.u64(), 2n ** 53n])).u32(size).u32(0).u64(0).u32(0).u32(0).bytesWritten, data);
        break;
      }
      case Op.SETATTR: args = new OutWriter().u32(r.u32() & 0x1ff).u32(0).u64(pickFh()).u64(r.pick([0n, 10n, r.u64()])).u64(0).u64(r.u64()).u64(r.u64()).u64(0).u32(r.u32()).u32(r.u32()).u32(0).u32(r.u32()).u32(0).u32(r.u32()).u32(r.u32()).u32(0).bytesWritten; break;
      case Op.BATCH_FORGET: {
        const n = r.pick([0, 1, 3, r.u32()]);
        const w = new OutWriter().u32(n).u32(0);
        for (let i = 0; i < Math.min(n, 5); i++) w.u64(pickNode()).u64(r.pick([1n, r.u64()]));
        args = w.bytesWritten;
        break;
      }
      case Op.FALLOCATE: args = new OutWriter().u64(pickFh()).u64(r.u64() >> BigInt(r.int(64))).u64(r.u64() >> BigInt(r.int(64))).u32(r.pick([0, 1, 3, r.u32()])).u32(0).bytesWritten; break;
      case Op.LSEEK: args = new OutWriter().u64(pickFh()).u64(r.u64() >> BigInt(r.int(64))).u32(r.int(6)).u32(0).bytesWritten; break;
      default: args = r.bytes(r.int(120));
    }
    // Sometimes the arguments are cut short or padded with junk.
    if (r.chance(0.1)) args = args.subarray(0, r.int(args.length + 1));
    if (r.chance(0.05)) args = concat(args, r.bytes(r.int(64)));
    const len = r.weighted<number | undefined>([[12, undefined], [1, r.u32()], [1, r.int(40)], [1, 40 + r.int(args.length + 8)]]);
    const outLen = r.weighted<number>([[10, 4096 + 16], [1, 0], [1, r.int(17)], [1, r.int(200)], [1, 16 + r.int(MAX_WRITE * 2)]]);
    const queue = r.chance(0.05) ? 0 : 1;
    const uid = r.chance(0.2) ? r.u32() : 0;
    let rep;
    try {
      rep = c.call(op, pickNode(), args, outLen, { len, queue, uid, gid: uid });
    } catch (e) {
      assert.fail(`${ctx}: op ${op}: ${(e as Error).message}`);
    }
    if (rep.len > 0) {
      assert.ok(rep.error === 0 || ERRNOS.has(-rep.error), `${ctx}: op ${op} error ${rep.error}`);
      assert.ok(rep.len <= outLen, ctx);
      if (rep.error === 0 && (op === Op.LOOKUP || op === Op.MKDIR || op === Op.CREATE || op === Op.SYMLINK || op === Op.MKNOD || op === Op.LINK) && rep.body.length >= 8) {
        nodes.push(new DataView(rep.body.buffer, rep.body.byteOffset).getBigUint64(0, true));
      }
      if (rep.error === 0 && (op === Op.OPEN || op === Op.OPENDIR) && rep.body.length >= 8) handles.push(new DataView(rep.body.buffer, rep.body.byteOffset).getBigUint64(0, true));
      if (rep.error === 0 && op === Op.CREATE && rep.body.length >= 136) handles.push(new DataView(rep.body.buffer, rep.body.byteOffset).getBigUint64(128, true));
    }
    if (op === Op.DESTROY || (op === Op.INIT && r.chance(0.5))) {
      c.init();
      nodes.length = 1;
      handles.length = 2;
    }
    if (step % 97 === 0) c.init();
  }
  // An overlong chain (more than any request) is refused unread.
  const head = c.driver.addSegments(1, [{ addr: 0x8010_0000n, len: 4 << 20 }, { addr: 0x80f0_0000n, len: 64, writable: true }]);
  c.driver.kick(1);
  assert.deepEqual(c.driver.used(1).map((u) => u.id), [head]);

  const s = c.device.server.stats;
  if (process.env.TSVISOR_FUZZ_VERBOSE) console.log(s, c.device.server.fs.nodeCount, c.device.server.fs.handleCount);
  assert.equal(s.internalErrors, 0, `internal errors: ${c.device.server.lastInternalError}`);
  assert.deepEqual(c.driver.warnings, []);
  assert.ok(c.device.server.fs.nodeCount < 5000 && c.device.server.fs.handleCount < 5000);
  const after = snapshotTree(outside);
  assert.equal(after, before, "nothing outside the share changed");
  c.device.close();
});
