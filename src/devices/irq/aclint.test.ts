import { test } from "node:test";
import assert from "node:assert/strict";
import { Aclint } from "./aclint.js";
import type { Core } from "../../vcpu/core.js";
import { SnapshotError, StateReader } from "../../snapshot/state.js";

// A stand-in for the core: per-hart time, mtimecmp and MSIP line.
function fakeCore(harts: number[]) {
  const time = new Map<number, bigint>(harts.map((h) => [h, 0n]));
  const cmp = new Map<number, bigint>(harts.map((h) => [h, 0xffff_ffff_ffff_ffffn]));
  const msip = new Map<number, number>(harts.map((h) => [h, 0]));
  const core = {
    fn: {
      setIrqLine: (h: number, line: number, level: number) => {
        assert.equal(line, 3, "the MSIP line");
        msip.set(h, level);
      },
      getIrqLine: (h: number, line: number) => {
        assert.equal(line, 3, "the MSIP line");
        return msip.get(h)!;
      },
      getTime: (h: number) => BigInt.asIntN(64, time.get(h)!),
      setTime: (h: number, t: bigint) => void time.set(h, BigInt.asUintN(64, t)),
      getMtimecmp: (h: number) => BigInt.asIntN(64, cmp.get(h)!), // i64 across the wasm boundary
      setMtimecmp: (h: number, v: bigint) => void cmp.set(h, BigInt.asUintN(64, v)),
    },
    k: { IRQ_LINE_MSIP: 3 },
  } as unknown as Core;
  return { core, time, cmp, msip };
}

const H0 = 0x10000;
const H1 = 0x20000;

test("msip: bit 0 of each hart's word drives that hart's MSIP line", () => {
  const { core, msip } = fakeCore([H0, H1]);
  const clint = new Aclint(core, [H0, H1]);
  clint.write(0x4, 4, 1n);
  assert.equal(msip.get(H1), 1);
  assert.equal(msip.get(H0), 0);
  assert.equal(clint.read(0x4, 4), 1n, "msip reads back (a WARL register, ACLINT spec MSWI chapter)");
  assert.equal(clint.read(0x0, 4), 0n);
  clint.write(0x4, 4, 0xfffffffen); // only bit 0 counts
  assert.equal(msip.get(H1), 0);
  assert.equal(clint.read(0x4, 4), 0n);
});

test("mtimecmp: 64-bit access and 32-bit halves, per hart", () => {
  const { core, cmp } = fakeCore([H0, H1]);
  const clint = new Aclint(core, [H0, H1]);
  clint.write(0x4008, 8, 0x1234_5678_9abc_def0n);
  assert.equal(cmp.get(H1), 0x1234_5678_9abc_def0n);
  assert.equal(clint.read(0x4008, 8), 0x1234_5678_9abc_def0n);
  assert.equal(clint.read(0x4008, 4), 0x9abc_def0n);
  assert.equal(clint.read(0x400c, 4), 0x1234_5678n);
  clint.write(0x4000, 4, 0x1111n);
  clint.write(0x4004, 4, 0x2222n);
  assert.equal(cmp.get(H0), 0x2222_0000_1111n);
  assert.equal(clint.read(0x4000, 8), 0x2222_0000_1111n, "reads are unsigned");
});

test("mtime: one platform counter, written to every hart", () => {
  const { core, time } = fakeCore([H0, H1]);
  const clint = new Aclint(core, [H0, H1]);
  clint.write(0xbff8, 8, 1000n);
  assert.equal(time.get(H0), 1000n);
  assert.equal(time.get(H1), 1000n);
  time.set(H0, 0xffff_ffff_0000_0005n);
  assert.equal(clint.read(0xbff8, 8), 0xffff_ffff_0000_0005n);
  assert.equal(clint.read(0xbffc, 4), 0xffff_ffffn);
  clint.write(0xbffc, 4, 0n);
  assert.equal(time.get(H1), 5n);
});

test("registers of harts that do not exist read as zero and ignore writes", () => {
  const { core, cmp } = fakeCore([H0]);
  const clint = new Aclint(core, [H0]);
  assert.equal(clint.read(0x4008, 8), 0n);
  clint.write(0x4008, 8, 5n);
  assert.equal(cmp.get(H0), 0xffff_ffff_ffff_ffffn);
  assert.equal(clint.read(0x0004, 4), 0n);
});

test("mtime with a VM clock: reads the clock, never below the time a hart already has", () => {
  const { core, time } = fakeCore([H0, H1]);
  let clock = 5_000n;
  const clint = new Aclint(core, [H0, H1], undefined, () => clock);
  time.set(H0, 4_000n); // hart 0 runs elsewhere and has not caught up
  assert.equal(clint.read(0xbff8, 8), 5_000n);
  assert.equal(clint.read(0xbffc, 4), 0n, "upper half");
  clock = 3_000n;
  assert.equal(clint.read(0xbff8, 8), 4_000n, "never below a hart's time");
});

test("msip has one home, the hart's MSIP line: a line set elsewhere (a restored hart block) reads back", () => {
  const { core, msip } = fakeCore([H0, H1]);
  const clint = new Aclint(core, [H0, H1]);
  msip.set(H0, 1);
  assert.equal(clint.read(0x0, 4), 1n);
  clint.write(0x0, 4, 0n);
  assert.equal(msip.get(H0), 0);
  assert.equal(clint.read(0x0, 4), 0n);
});

test("snapshot: the ACLINT saves only its shape (its registers live in the harts) and refuses another", () => {
  const { core } = fakeCore([H0, H1]);
  const saved = JSON.parse(JSON.stringify(new Aclint(core, [H0, H1]).saveState()));
  assert.deepEqual(saved, { harts: 2 });
  new Aclint(core, [H0, H1]).restoreState(new StateReader(saved, "clint"));
  assert.throws(() => new Aclint(core, [H0]).restoreState(new StateReader(saved, "clint")), (e: Error) => e instanceof SnapshotError && /^clint\.harts: /.test(e.message));
  assert.throws(() => new Aclint(core, [H0]).restoreState(new StateReader(null, "clint")), SnapshotError);
});
