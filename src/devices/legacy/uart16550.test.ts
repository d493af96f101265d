// The UART as Linux's 8250 driver uses it: transmit, receive with interrupts,
// the THR-empty interrupt handshake, the divisor latch and loopback.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Uart16550 } from "./uart16550.js";

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
