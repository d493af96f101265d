import { test } from "node:test";
import assert from "node:assert/strict";
import { VmGenId } from "./vmgenid.js";
import { StateReader, SnapshotError } from "../../snapshot/state.js";

function readId(d: VmGenId): string {
  return [0, 8].map((o) => d.read(o, 8).toString(16).padStart(16, "0")).join("");
}

test("vmgenid: a 128-bit ID readable at any size; a new generation changes it and raises the line until the guest reads it", () => {
  const lines: boolean[] = [];
  const d = new VmGenId({ setIrq: (l) => lines.push(l) });
  const first = readId(d);
  assert.equal(first.length, 32);
  assert.equal(d.read(0, 1), BigInt(parseInt(first.slice(14, 16), 16)), "little-endian bytes");
  assert.equal(d.read(16, 4), 0n, "nothing past the ID");
  d.write();
  assert.equal(readId(d), first, "the guest cannot write it");
  d.newGeneration();
  assert.deepEqual(lines, [true]);
  const second = readId(d);
  assert.notEqual(second, first);
  assert.deepEqual(lines, [true, false], "reading the ID acknowledges the interrupt");
});

test("vmgenid: saved and restored as it was; tampered state refused", () => {
  const a = new VmGenId({ setIrq: () => {} });
  const state = JSON.parse(JSON.stringify(a.saveState()));
  const lines: boolean[] = [];
  const b = new VmGenId({ setIrq: (l) => lines.push(l) });
  b.restoreState(new StateReader(state, "vmgenid"));
  assert.equal(readId(b), readId(a));
  assert.throws(() => b.restoreState(new StateReader({ id: "AAAA", irq: false }, "vmgenid")), SnapshotError);
  assert.throws(() => b.restoreState(new StateReader({ id: state.id, irq: 1 }, "vmgenid")), /vmgenid\.irq/);
});
