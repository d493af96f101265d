// The RTC as the guest drives it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { GoldfishRtc } from "./goldfish-rtc.js";

function rtc(startNs: bigint) {
  let now = startNs;
  const irq: boolean[] = [];
  const dev = new GoldfishRtc({ nowNs: () => now, setIrq: (l) => irq.push(l) });
  return { dev, irq, advance: (ns: bigint) => { now += ns; } };
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
