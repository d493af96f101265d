// The RTC as the guest drives it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { GoldfishRtc } from "./goldfish-rtc.js";
import { SnapshotError, StateReader } from "../../snapshot/state.js";

function rtc(startNs: bigint) {
  let now = startNs;
  const irq: boolean[] = [];
  const dev = new GoldfishRtc({ nowNs: () => now, setIrq: (l) => irq.push(l) });
  const time = () => { const lo = dev.read(0x00, 4); return (dev.read(0x04, 4) << 32n) | lo; };
  return { dev, irq, time, advance: (ns: bigint) => { now += ns; } };
}

test("TIME_LOW latches TIME_HIGH, so a 64-bit read is consistent", () => {
  const { dev, advance } = rtc(0x1_ffff_fff0n);
  const lo = dev.read(0x00, 4);
  advance(0x100n); // the low word wraps in between
  const hi = dev.read(0x04, 4);
  assert.equal((hi << 32n) | lo, 0x1_ffff_fff0n);
});

test("the guest can set the clock; it then runs on from there", () => {
  const { dev, advance } = rtc(5_000n);
  dev.write(0x04, 4, 0n);
  dev.write(0x00, 4, 1_000n);
  advance(10n);
  const lo = dev.read(0x00, 4);
  assert.equal((dev.read(0x04, 4) << 32n) | lo, 1_010n);
});

test("an armed alarm interrupts when due if enabled, and is cleared by the guest", () => {
  const { dev, irq, advance } = rtc(1_000n);
  dev.write(0x10, 4, 1n);
  dev.write(0x0c, 4, 0n);
  dev.write(0x08, 4, 1_500n);
  assert.equal(dev.read(0x18, 4), 1n, "alarm pending");
  dev.poll();
  assert.deepEqual(irq, []);
  advance(600n);
  dev.poll();
  assert.deepEqual(irq, [true]);
  assert.equal(dev.read(0x18, 4), 0n);
  dev.write(0x1c, 4, 1n);
  assert.deepEqual(irq, [true, false]);
});

test("the counter is 64 bits wide and wraps", () => {
  const { dev, time, advance } = rtc(1_000n);
  dev.write(0x04, 4, 0xffff_ffffn);
  dev.write(0x00, 4, 0xffff_fff0n);
  assert.equal(time(), 0xffff_ffff_ffff_fff0n);
  advance(0x20n);
  assert.equal(time(), 0x10n);
  assert.equal(dev.read(0x04, 4), 0n);
});

test("snapshot: the guest's clock offset, alarm and line survive a JSON round trip onto another host time", () => {
  const a = rtc(10_000_000n);
  a.dev.write(0x04, 4, 0n);
  a.dev.write(0x00, 4, 5_000n); // the guest set the clock back (hwclock --systohc)
  a.dev.write(0x10, 4, 1n);
  a.dev.write(0x0c, 4, 0n);
  a.dev.write(0x08, 4, 9_000n);
  a.dev.write(0x0c, 4, 7n); // half-written next alarm
  a.dev.read(0x00, 4); // latches the high word
  const saved = JSON.parse(JSON.stringify(a.dev.saveState()));

  const b = rtc(10_000_000n);
  b.dev.restoreState(new StateReader(saved, "rtc"));
  assert.deepEqual(b.irq, [false], "line driven");
  for (const off of [0x04, 0x08, 0x0c, 0x10, 0x18]) assert.equal(b.dev.read(off, 4), a.dev.read(off, 4), `register ${off}`);
  assert.equal(b.time(), 5_000n, "guest time as it was");
  b.advance(4_000n);
  b.dev.poll();
  assert.deepEqual(b.irq, [false, true], "the alarm fires at the guest's 9000");
  const again = JSON.parse(JSON.stringify(b.dev.saveState()));
  const c = rtc(20_000_000n); // restored later: guest time follows host time from the saved offset
  c.dev.restoreState(new StateReader(again, "rtc"));
  assert.deepEqual(c.irq, [true]);
  assert.equal(c.time(), 10_005_000n, "5000 set at host 10 ms, read at host 20 ms");
  assert.equal(c.dev.read(0x18, 4), 0n, "the alarm fired before the save");
});

test("snapshot: tampered state is refused with a SnapshotError naming the field, nothing applied", () => {
  const a = rtc(1_000n);
  a.dev.write(0x10, 4, 1n);
  const good = a.dev.saveState() as Record<string, unknown>;
  const bad = (patch: Record<string, unknown>, match: RegExp) => {
    const b = rtc(1_000n);
    assert.throws(() => b.dev.restoreState(new StateReader({ ...good, ...patch }, "rtc")), (e: Error) => e instanceof SnapshotError && match.test(e.message));
    assert.equal(b.dev.read(0x10, 4), 0n, "nothing applied");
    assert.deepEqual(b.irq, []);
  };
  bad({ offsetNs: "0x1ffffffffffffffff" }, /^rtc\.offsetNs: expected a 64-bit hex value/);
  bad({ offsetNs: -5 }, /^rtc\.offsetNs/);
  bad({ alarm: "0x5" }, /^rtc: alarm: set while not armed/);
  bad({ alarmHigh: 0x1_0000_0000 }, /^rtc\.alarmHigh/);
  bad({ latchedHigh: 1.5 }, /^rtc\.latchedHigh/);
  bad({ irqEnabled: false, irq: true }, /^rtc: irq: raised while interrupts are disabled/);
  bad({ alarmArmed: "yes" }, /^rtc\.alarmArmed/);
});
