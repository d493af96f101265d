// Two UDP backends in one process pointed at each other: frames both ways,
// strangers ignored, receive pausing drops, a busy port refused.

import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { createSocket } from "node:dgram";
import { openNetBackend, parseNetSpec, type NetBackend } from "./net-backend.js";
import { FrameSink, frameTag, freeUdpPorts, sameBytes, testFrame } from "./testing.js";

const opened: NetBackend[] = [];
afterEach(() => {
  for (const b of opened.splice(0)) b.close();
});

async function pair(): Promise<[NetBackend, NetBackend, number, number]> {
  const [pa, pb] = await freeUdpPorts(2);
  const a = await openNetBackend(parseNetSpec(`socket=udp:127.0.0.1:${pa},peer=127.0.0.1:${pb}`));
  opened.push(a);
  const b = await openNetBackend(parseNetSpec(`socket=udp:localhost:${pb},peer=127.0.0.1:${pa},mac=52:54:00:00:00:02`));
  opened.push(b);
  return [a, b, pa, pb];
}

test("udp: frames both ways, one per datagram, bytes intact", async () => {
  const [a, b] = await pair();
  assert.match(a.description, /^socket:udp:127\.0\.0\.1:\d+->127\.0\.0\.1:\d+$/);
  const atA = new FrameSink(a);
  const atB = new FrameSink(b);
  const big = testFrame(1, 1, 60000);
  a.send(big);
  assert.ok(sameBytes(await atB.next(), big));
  for (let i = 2; i < 20; i++) b.send(testFrame(2, i, 100 + i));
  for (let i = 2; i < 20; i++) assert.equal(frameTag(await atA.next((f) => frameTag(f) === i)), i);
  assert.equal(a.stats.txFrames, 1);
  assert.equal(a.stats.txBytes, 60000);
  assert.equal(b.stats.rxBytes, 60000);
  assert.equal(a.stats.rxFrames, 18);
  a.send(testFrame(1, 99, 65530)); // does not fit a datagram
  assert.equal(a.stats.txDropped, 1);
});

test("udp: datagrams from anyone but the peer are ignored; paused receive drops and counts", async () => {
  const [a, b, pa] = await pair();
  const atA = new FrameSink(a);
  const stranger = createSocket("udp4");
  await new Promise((r) => stranger.send(Buffer.from(testFrame(9, 9)), pa, "127.0.0.1", r));
  stranger.close();
  b.send(testFrame(2, 1));
  assert.equal(frameTag(await atA.next()), 1, "the peer's frame, not the stranger's");
  a.setRxPaused(true);
  b.send(testFrame(2, 2));
  // Loopback delivers it when the event loop gets to it: wait for the count (a loaded machine may take longer than a moment).
  for (let i = 0; i < 500 && a.stats.rxDropped === 0; i++) await new Promise((r) => setTimeout(r, 10));
  assert.equal(a.stats.rxDropped, 1);
  a.setRxPaused(false);
  b.send(testFrame(2, 3));
  assert.equal(frameTag(await atA.next()), 3);
  assert.equal(atA.frames.length, 0);
});

test("udp: a port in use is refused with one line", async () => {
  const [a, , pa, pb] = await pair();
  assert.ok(a);
  await assert.rejects(openNetBackend(parseNetSpec(`socket=udp:127.0.0.1:${pa},peer=127.0.0.1:${pb}`)), /cannot bind 127\.0\.0\.1:\d+: .*EADDRINUSE/);
});
