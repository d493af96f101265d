import { test } from "node:test";
import assert from "node:assert/strict";
import { MmioBus, BusOverlapError, type MmioDevice } from "./mmio-bus.js";

class Recorder implements MmioDevice {
  readonly log: string[] = [];
  constructor(readonly name: string) {}
  read(offset: number, size: number): bigint {
    this.log.push(`r ${offset} ${size}`);
    return BigInt(offset);
  }
  write(offset: number, size: number, value: bigint): void {
    this.log.push(`w ${offset} ${size} ${value}`);
  }
}

test("devices see offsets into their own range", () => {
  const bus = new MmioBus();
  const uart = new Recorder("uart");
  const clint = new Recorder("clint");
  bus.register(0x1000_0000n, 0x100n, uart);
  bus.register(0x0200_0000n, 0x1_0000n, clint);
  const hit = bus.find(0x1000_0005n, 1)!;
  assert.equal(hit.device, uart);
  assert.equal(hit.offset, 5);
  assert.equal(bus.find(0x0200_bff8n, 8)!.device, clint);
  assert.equal(bus.find(0x0200_bff8n, 8)!.offset, 0xbff8);
});

test("ranges are half-open: the first byte past a range belongs to nobody", () => {
  const bus = new MmioBus();
  bus.register(0x1000n, 0x100n, new Recorder("a"));
  assert.ok(bus.find(0x1000n, 1));
  assert.ok(bus.find(0x10ffn, 1));
  assert.equal(bus.find(0x1100n, 1), undefined);
  assert.equal(bus.find(0xfffn, 1), undefined);
});

test("an access straddling the end of a range is not claimed", () => {
  const bus = new MmioBus();
  bus.register(0x1000n, 0x100n, new Recorder("a"));
  assert.ok(bus.find(0x10f8n, 8));
  assert.equal(bus.find(0x10fcn, 8), undefined);
});

test("overlapping registrations are refused; adjacent ones are fine", () => {
  const bus = new MmioBus();
  bus.register(0x1000n, 0x100n, new Recorder("a"));
  assert.throws(() => bus.register(0x10f0n, 0x100n, new Recorder("b")), BusOverlapError);
  assert.throws(() => bus.register(0x0f00n, 0x101n, new Recorder("c")), BusOverlapError);
  assert.throws(() => bus.register(0x1010n, 0x10n, new Recorder("inside")), BusOverlapError);
  assert.throws(() => bus.register(0x0f00n, 0x1000n, new Recorder("around")), BusOverlapError);
  bus.register(0x1100n, 0x100n, new Recorder("after"));
  bus.register(0x0f00n, 0x100n, new Recorder("before"));
  assert.equal(bus.find(0x1100n, 4)!.device.name, "after");
  assert.equal(bus.find(0x0fffn, 1)!.device.name, "before");
});

test("an empty range is refused", () => {
  assert.throws(() => new MmioBus().register(0x1000n, 0n, new Recorder("a")), /empty/);
});
