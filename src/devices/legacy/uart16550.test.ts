// The UART as Linux's 8250 driver uses it: transmit, receive with interrupts,
// the THR-empty interrupt handshake, the divisor latch and loopback.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Uart16550, UART_MAX_BACKLOG } from "./uart16550.js";
import { SnapshotError, StateReader, bytes } from "../../snapshot/state.js";

function setup() {
  const out: number[] = [];
  const irq: boolean[] = [];
  const uart = new Uart16550({ transmit: (b) => out.push(b), setIrq: (l) => irq.push(l) });
  const w = (reg: number, v: number) => uart.write(reg, 1, BigInt(v));
  const r = (reg: number) => Number(uart.read(reg, 1));
  return { uart, out, irq, w, r, line: () => irq.at(-1) ?? false };
}

test("bytes written to THR reach the host; LSR always shows an empty transmitter", () => {
  const { out, w, r } = setup();
  for (const c of "ok") w(0, c.charCodeAt(0));
  assert.equal(String.fromCharCode(...out), "ok");
  assert.equal(r(5) & 0x60, 0x60);
});

test("received bytes set DR and, when enabled, the RDA interrupt until read", () => {
  const { uart, w, r, line } = setup();
  w(2, 0x07); // FIFO on, cleared
  w(1, 0x01); // IER: RDA
  uart.receive(new TextEncoder().encode("hi"));
  assert.equal(line(), true);
  assert.equal(r(2) & 0x0f, 0x04, "IIR: received data available");
  assert.equal(r(2) & 0xc0, 0xc0, "FIFOs enabled");
  assert.equal(r(5) & 1, 1);
  assert.equal(String.fromCharCode(r(0), r(0)), "hi");
  assert.equal(r(5) & 1, 0);
  assert.equal(line(), false);
});

test("THR-empty interrupt: raised on enable, acknowledged by reading IIR, re-armed by each write", () => {
  const { w, r, line } = setup();
  w(1, 0x02);
  assert.equal(line(), true, "enabling ETBEI with an empty THR interrupts at once");
  assert.equal(r(2) & 0x0f, 0x02);
  assert.equal(line(), false, "reading IIR acknowledged it");
  assert.equal(r(2) & 0x0f, 0x01, "nothing pending");
  w(0, 0x41);
  assert.equal(line(), true, "the byte went out: THR empty again");
  w(1, 0x00);
  assert.equal(line(), false);
});

test("input beyond the FIFO waits on the host side and is delivered in order", () => {
  const { uart, w, r } = setup();
  w(2, 0x01);
  const text = "0123456789abcdefghijklmnopqrstuvwxyz";
  uart.receive(new TextEncoder().encode(text));
  let got = "";
  while (r(5) & 1) got += String.fromCharCode(r(0));
  assert.equal(got, text);
});

test("DLAB selects the divisor latch; scratch and line control read back", () => {
  const { w, r, out } = setup();
  w(3, 0x83);
  w(0, 0x0c);
  w(1, 0x00);
  assert.deepEqual([r(0), r(1)], [0x0c, 0x00]);
  assert.equal(out.length, 0, "divisor writes are not data");
  w(3, 0x03);
  w(7, 0x5a);
  assert.deepEqual([r(3), r(7)], [0x03, 0x5a]);
});

test("loopback returns transmitted bytes as input and mirrors modem control", () => {
  const { w, r, out } = setup();
  w(4, 0x10 | 0x0b); // LOOP, DTR, RTS, OUT2
  w(0, 0x55);
  assert.equal(out.length, 0);
  assert.equal(r(0), 0x55);
  assert.equal(r(6) & 0xf0, 0x20 | 0x10 | 0x80, "DSR, CTS, DCD");
});

test("accesses other than one byte are ignored", () => {
  const { uart, out } = setup();
  uart.write(0, 4, 0x41n);
  assert.equal(out.length, 0);
  assert.equal(uart.read(5, 2), 0n);
});

test("snapshot: registers, FIFO, backlog and line survive a JSON round trip onto a new UART", () => {
  const a = setup();
  a.w(3, 0x80); a.w(0, 0x0c); a.w(1, 0x00); a.w(3, 0x03); // divisor 12, 8N1
  a.w(2, 0x07);
  a.w(4, 0x0b);
  a.w(7, 0x5a);
  a.w(1, 0x03); // RDA and THRE interrupts
  a.uart.receive(new Uint8Array(20).map((_, i) => 0x41 + i)); // 16 in the FIFO, 4 waiting
  assert.equal(a.r(0), 0x41);
  assert.equal(a.line(), true);
  const saved = JSON.parse(JSON.stringify(a.uart.saveState()));

  const b = setup();
  b.uart.restoreState(new StateReader(saved, "uart"));
  assert.deepEqual(b.irq, [true], "the line driven to the restored level");
  assert.equal(b.uart.rxWaiting, a.uart.rxWaiting);
  for (const reg of [1, 3, 4, 5, 6, 7]) assert.equal(b.r(reg), a.r(reg), `register ${reg}`);
  b.w(3, 0x83); a.w(3, 0x83);
  assert.equal(b.r(0), a.r(0), "DLL");
  assert.equal(b.r(1), a.r(1), "DLM");
  b.w(3, 0x03); a.w(3, 0x03);
  const drain = (u: ReturnType<typeof setup>) => { const got: number[] = []; while (u.r(5) & 1) got.push(u.r(0)); return got; };
  const got = drain(b);
  assert.deepEqual(got, drain(a));
  assert.equal(got.length, 19);
  // THR-empty was armed: IIR reports it, and reading it acknowledges it.
  assert.equal(b.r(2) & 0x0f, 0x02);
  assert.equal(b.line(), false);
});

test("snapshot: tampered state is refused with a SnapshotError naming the field, nothing applied", () => {
  const a = setup();
  a.w(7, 0x11);
  const good = a.uart.saveState() as Record<string, unknown>;
  const bad = (patch: Record<string, unknown>, match: RegExp) => {
    const b = setup();
    assert.throws(() => b.uart.restoreState(new StateReader({ ...good, ...patch }, "uart")), (e: Error) => e instanceof SnapshotError && match.test(e.message));
    assert.equal(b.r(7), 0, "nothing applied");
    assert.deepEqual(b.irq, [], "line untouched");
  };
  bad({ ier: 16 }, /^uart\.ier: expected an integer 0\.\.15/);
  bad({ lcr: 256 }, /^uart\.lcr/);
  bad({ fcr: 0x02 }, /^uart: fcr: 0x2 has bits/);
  bad({ rx: bytes(new Uint8Array(17)) }, /^uart\.rx: /);
  bad({ rx: "not base64!" }, /^uart\.rx: expected base64/);
  bad({ backlog: bytes(new Uint8Array(UART_MAX_BACKLOG + 1)) }, /^uart\.backlog: /);
  bad({ overrun: 1 }, /^uart\.overrun: expected true or false/);
  bad({ irq: true }, /^uart: irq: true but the restored registers make the line low/);
  bad({ ier: 2, thrIpending: true }, /^uart: irq: false but .* high/);
  const { scr: _, ...noScr } = good;
  assert.throws(() => setup().uart.restoreState(new StateReader(noScr, "uart")), /^SnapshotError: uart\.scr: missing/);
});
