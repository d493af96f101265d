import { test } from "node:test";
import assert from "node:assert/strict";
import { TestDriver } from "./test-driver.js";
import { VirtioConsole, VIRTIO_CONSOLE_F_SIZE, CONSOLE_INPUT_LIMIT } from "./console.js";
import { VIRTIO_F_VERSION_1 } from "./virtio.js";

const RX = 0;
const TX = 1;
const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array) => new TextDecoder().decode(b);

function setup(opts: { size?: { cols: number; rows: number }; features?: bigint } = {}) {
  const out: Uint8Array[] = [];
  const con = new VirtioConsole({ name: "console0", output: (b) => out.push(Uint8Array.from(b)), size: opts.size });
  const d = new TestDriver(con);
  d.start(opts.features ?? VIRTIO_F_VERSION_1);
  return { d, con, out, text: () => out.map(dec).join("") };
}

test("virtio-console identifies itself; no multiport, size only when the host gave one", () => {
  const { d } = setup();
  assert.equal(d.reg(0x008), 3);
  assert.equal(d.deviceFeatures() & 0xff_ffffn, 0n);
  assert.equal(d.reg(0x034), 64);
  const s = setup({ size: { cols: 132, rows: 43 }, features: VIRTIO_F_VERSION_1 | VIRTIO_CONSOLE_F_SIZE });
  assert.equal(s.d.deviceFeatures() & 0xff_ffffn, VIRTIO_CONSOLE_F_SIZE);
  assert.equal(Number(s.d.transport.read(0x100, 2)), 132);
  assert.equal(Number(s.d.transport.read(0x102, 2)), 43);
  assert.equal(Number(s.d.transport.read(0x104, 4)), 0);
});

test("virtio-console resize updates cols/rows and raises a config interrupt", () => {
  const { d, con } = setup({ size: { cols: 80, rows: 24 }, features: VIRTIO_F_VERSION_1 | VIRTIO_CONSOLE_F_SIZE });
  d.ackInterrupts();
  const gen = d.reg(0xfc);
  con.resize(100, 30);
  assert.equal(Number(d.transport.read(0x100, 4)), 100 | (30 << 16));
  assert.equal(d.ackInterrupts() & 2, 2);
  assert.notEqual(d.reg(0xfc), gen);
  con.resize(100, 30);
  assert.equal(d.ackInterrupts(), 0, "same size: no interrupt");
});

test("virtio-console output: every readable byte of every chain, in order", () => {
  const { d, con, text } = setup();
  const a = d.add(TX, [{ data: enc("hello, ") }]);
  const b = d.add(TX, [{ data: enc("wor") }, { data: enc("ld") }]);
  const c = d.add(TX, [{ data: enc("\n") }, { writeLen: 8 }]);
  const e = d.add(TX, [{ writeLen: 8 }]);
  d.kick(TX);
  assert.equal(text(), "hello, world\n");
  assert.deepEqual(d.used(TX), [a, b, c, e].map((id) => ({ id, len: 0 })));
  assert.ok(d.irq);
  d.add(TX, [{ data: enc("more") }]);
  d.kick(TX);
  assert.equal(text(), "hello, world\nmore");
  assert.equal(con.stats.bytesOut, 17);
});

test("virtio-console output of a large buffer arrives whole, in pieces", () => {
  const { d, out } = setup();
  const big = new Uint8Array(200_000).map((_, i) => i & 0xff);
  d.add(TX, [{ data: big }]);
  d.kick(TX);
  const got = new Uint8Array(out.reduce((n, b) => n + b.length, 0));
  let at = 0;
  for (const b of out) {
    got.set(b, at);
    at += b.length;
  }
  assert.deepEqual(got, big);
});

test("virtio-console input is delivered on poll when buffers are there", () => {
  const { d, con } = setup();
  const a = d.add(RX, [{ writeLen: 64 }]);
  d.kick(RX);
  assert.deepEqual(d.used(RX), []);
  con.input(enc("ls -l\n"));
  assert.ok(d.polls >= 1, "input asks for a poll");
  assert.equal(con.inputBacklog, 6);
  d.transport.poll();
  assert.deepEqual(d.used(RX), [{ id: a, len: 6 }]);
  assert.equal(dec(d.mem.read(d.bufferAddr(RX, a, 0), 6)), "ls -l\n");
  assert.equal(con.inputBacklog, 0);
  assert.ok(d.irq);
});

test("virtio-console input waits for buffers that arrive later, split over small ones, in order", () => {
  const { d, con } = setup();
  con.input(enc("abc"));
  con.input(enc("defgh"));
  con.input(enc("ij"));
  d.transport.poll();
  assert.equal(con.inputBacklog, 10);
  const a = d.add(RX, [{ writeLen: 4 }]);
  const b = d.add(RX, [{ writeLen: 2 }, { writeLen: 2 }]);
  d.kick(RX);
  assert.deepEqual(d.used(RX), [{ id: a, len: 4 }, { id: b, len: 4 }]);
  assert.equal(con.inputBacklog, 2);
  const c = d.add(RX, [{ writeLen: 100 }]);
  const e = d.add(RX, [{ writeLen: 100 }]);
  d.kick(RX);
  assert.deepEqual(d.used(RX), [{ id: c, len: 2 }]);
  const got = dec(d.mem.read(d.bufferAddr(RX, a, 0), 4)) + dec(d.mem.read(d.bufferAddr(RX, b, 0), 2)) +
    dec(d.mem.read(d.bufferAddr(RX, b, 1), 2)) + dec(d.mem.read(d.bufferAddr(RX, c, 0), 2));
  assert.equal(got, "abcdefghij");
  // the spare buffer takes the next input
  con.input(enc("k"));
  d.transport.poll();
  assert.deepEqual(d.used(RX), [{ id: e, len: 1 }]);
  assert.equal(con.stats.bytesIn, 11);
});

test("virtio-console input typed before the driver is ready survives reset and arrives after DRIVER_OK", () => {
  const out: Uint8Array[] = [];
  const con = new VirtioConsole({ name: "console0", output: (b) => out.push(b) });
  const d = new TestDriver(con);
  con.input(enc("early"));
  assert.equal(d.polls, 0);
  d.start();
  assert.ok(d.polls >= 1, "activation asks for a poll");
  const a = d.add(RX, [{ writeLen: 16 }]);
  d.transport.poll();
  assert.deepEqual(d.used(RX), [{ id: a, len: 5 }]);
  assert.equal(dec(d.mem.read(d.bufferAddr(RX, a, 0), 5)), "early");
});

test("virtio-console input never goes into device-readable buffers", () => {
  const { d, con } = setup();
  const bad = d.add(RX, [{ data: new Uint8Array(8) }]);
  const good = d.add(RX, [{ writeLen: 8 }]);
  con.input(enc("xy"));
  d.transport.poll();
  assert.deepEqual(d.used(RX), [{ id: bad, len: 0 }, { id: good, len: 2 }]);
  assert.deepEqual(d.mem.read(d.bufferAddr(RX, bad, 0), 8), new Uint8Array(8));
});

test("virtio-console input backlog is bounded; keystrokes one at a time are kept in order", () => {
  const { con } = setup();
  con.input(new Uint8Array(CONSOLE_INPUT_LIMIT - 2));
  con.input(enc("abcd"));
  assert.equal(con.inputBacklog, CONSOLE_INPUT_LIMIT);
  assert.equal(con.stats.inputDropped, 2);
  const { d: d2, con: con2 } = setup();
  const typed = "echo hello world\n";
  for (const ch of typed) con2.input(enc(ch));
  const a = d2.add(RX, [{ writeLen: 5 }]);
  const b = d2.add(RX, [{ writeLen: 64 }]);
  d2.kick(RX);
  assert.equal(dec(d2.mem.read(d2.bufferAddr(RX, a, 0), 5)) + dec(d2.mem.read(d2.bufferAddr(RX, b, 0), 12)), typed);
  assert.deepEqual(con2.statsLines(), ["console0: out 0 B, in 17 B, 0 B waiting, 0 bytes dropped"]);
});

import { SnapshotError, StateReader, bytes } from "../../snapshot/state.js";

test("virtio-console snapshot: pending input survives, output and input go on after restore", async () => {
  const { d, con, text } = setup({ size: { cols: 80, rows: 24 }, features: VIRTIO_F_VERSION_1 | VIRTIO_CONSOLE_F_SIZE });
  d.add(TX, [{ data: enc("before ") }]);
  d.kick(TX);
  assert.equal(text(), "before ");
  d.used(TX);
  con.input(enc("typed ahead"));
  // A receive buffer too small for all of it: the rest waits.
  const r1 = d.add(RX, [{ writeLen: 5 }]);
  d.kick(RX);
  assert.deepEqual(d.used(RX), [{ id: r1, len: 5 }]);
  const state = await d.snapshot();

  const out2: string[] = [];
  const con2 = new VirtioConsole({ name: "console0", output: (b) => out2.push(dec(b)), size: { cols: 100, rows: 30 } });
  const d2 = TestDriver.restored(con2, d);
  d2.ackInterrupts();
  d2.transport.restoreState(new StateReader(state, "console0"));
  d2.transport.resumeIo();
  assert.equal(con2.inputBacklog, " ahead".length);
  assert.equal(d2.reg(0x60) & 2, 2, "the guest hears that the terminal is another size now");
  const r2 = d2.add(RX, [{ writeLen: 64 }]);
  d2.kick(RX);
  assert.deepEqual(d2.used(RX), [{ id: r2, len: 6 }]);
  assert.equal(dec(d2.mem.read(d2.bufferAddr(RX, r2, 0), 6)), " ahead");
  d2.add(TX, [{ data: enc("after") }]);
  d2.kick(TX);
  assert.equal(out2.join(""), "after");
  assert.equal(d2.used(TX).length, 1);
});

test("virtio-console snapshot: tampered state is refused", async () => {
  const { d } = setup();
  const state = (await d.snapshot()) as { [k: string]: any };
  const cases: [(s: any) => void, RegExp][] = [
    [(s) => (s.device.input = bytes(new Uint8Array(CONSOLE_INPUT_LIMIT + 1))), /console0\.device\.input: 1048577 bytes, at most 1048576 allowed/],
    [(s) => (s.device.input = "not base64!"), /console0\.device\.input: expected base64 bytes/],
    [(s) => (s.device.cols = -1), /console0\.device\.cols: expected an integer 0\.\.65535/],
    [(s) => (s.queues[1].indices.lastAvail = 1), /console0\.device: queue 1 has 1 requests in flight/],
  ];
  for (const [tamper, message] of cases) {
    const bad = structuredClone(state);
    tamper(bad);
    const d2 = TestDriver.restored(new VirtioConsole({ name: "console0", output() {} }), d);
    assert.throws(() => d2.transport.restoreState(new StateReader(bad, "console0")), (e: unknown) => e instanceof SnapshotError && message.test(e.message));
  }
});
