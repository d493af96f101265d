// NS16550A UART, the console of QEMU's riscv `virt` machine (compatible
// "ns16550a", byte-wide registers). Register semantics follow the National
// Semiconductor PC16550D datasheet; transmission is instantaneous (the byte
// goes to the host at once), so the transmitter is always empty.
//
// Registers (offset: read / write), DLAB = LCR bit 7 selects the divisor latch:
//   0: RBR / THR   (DLAB: DLL)      4: MCR
//   1: IER         (DLAB: DLM)      5: LSR (read-only)
//   2: IIR / FCR                    6: MSR (read-only)
//   3: LCR                          7: SCR

import type { MmioDevice } from "../../bus/mmio-bus.js";
import { bytes, type Plain, type StateReader } from "../../snapshot/state.js";

export const UART_SIZE = 0x100n;

const IER_RDA = 0x01; //  received data available
const IER_THRE = 0x02; // transmitter holding register empty
const IER_RLS = 0x04; //  receiver line status
const IIR_NONE = 0x01;
const IIR_RLS = 0x06;
const IIR_RDA = 0x04;
const IIR_THRE = 0x02;
const IIR_FIFO_ENABLED = 0xc0;
const LSR_DR = 0x01;
const LSR_OE = 0x02;
const LSR_THRE = 0x20;
const LSR_TEMT = 0x40;
const MCR_LOOP = 0x10;
const LCR_DLAB = 0x80;
const FCR_ENABLE = 0x01;
const FCR_CLEAR_RX = 0x02;
/** Bytes the receive FIFO holds; host input beyond it waits in `backlog`. */
const RX_FIFO = 16;
/** Most host input a snapshot keeps waiting beyond the FIFO (the host console
 *  pauses its input at 64 KiB of backlog); a restore refuses more. */
export const UART_MAX_BACKLOG = 1 << 20;

export interface UartHost {
  /** A byte the guest transmitted. */
  transmit(byte: number): void;
  /** The interrupt line (to the PLIC). */
  setIrq(level: boolean): void;
}

export class Uart16550 implements MmioDevice {
  readonly name = "uart";
  private rx: number[] = [];
  private backlog: number[] = [];
  private ier = 0;
  private lcr = 0;
  private mcr = 0;
  private fcr = 0;
  private scr = 0;
  private dll = 0;
  private dlm = 0;
  private overrun = false;
  /** THR-empty interrupt armed (datasheet: set when THR empties, cleared by
   *  reading IIR while it is the reported source, or by writing THR). */
  private thrIpending = false;
  private irq = false;

  constructor(private readonly host: UartHost) {}

  /** Plain state: every register, the receive FIFO and the host input
   *  waiting behind it (at most UART_MAX_BACKLOG bytes of it: the newest
   *  beyond that are dropped, as an overrun would), the pending interrupt
   *  sources and the line. The host callbacks are wiring. */
  saveState(): Plain {
    return {
      ier: this.ier, lcr: this.lcr, mcr: this.mcr, fcr: this.fcr, scr: this.scr, dll: this.dll, dlm: this.dlm,
      rx: bytes(Uint8Array.from(this.rx)),
      backlog: bytes(Uint8Array.from(this.backlog.slice(0, UART_MAX_BACKLOG))),
      overrun: this.overrun, thrIpending: this.thrIpending, irq: this.irq,
    };
  }

  /** Restore saveState()'s value (untrusted: all checked before anything
   *  changes), then drive the interrupt line to the restored level. */
  restoreState(r: StateReader): void {
    const ier = r.int("ier", 0, 0x0f);
    const lcr = r.int("lcr", 0, 0xff);
    const mcr = r.int("mcr", 0, 0x1f);
    const fcr = r.int("fcr", 0, 0xff);
    r.check((fcr & ~0xc9) === 0, `fcr: 0x${fcr.toString(16)} has bits the FCR does not keep`);
    const scr = r.int("scr", 0, 0xff);
    const dll = r.int("dll", 0, 0xff);
    const dlm = r.int("dlm", 0, 0xff);
    const rx = r.bytes("rx", RX_FIFO);
    const backlog = r.bytes("backlog", UART_MAX_BACKLOG);
    const overrun = r.bool("overrun");
    const thrIpending = r.bool("thrIpending");
    const irq = r.bool("irq");
    // The line always follows the pending sources: a snapshot saying otherwise was altered.
    const level = interruptId(ier, overrun, rx.length > 0, thrIpending) !== IIR_NONE;
    r.check(irq === level, `irq: ${irq} but the restored registers make the line ${level ? "high" : "low"}`);
    this.ier = ier; this.lcr = lcr; this.mcr = mcr; this.fcr = fcr; this.scr = scr; this.dll = dll; this.dlm = dlm;
    this.rx = [...rx];
    this.backlog = [...backlog];
    this.overrun = overrun;
    this.thrIpending = thrIpending;
    this.irq = level;
    this.host.setIrq(level);
  }

  /** Bytes typed on the host side. */
  receive(bytes: Uint8Array): void {
    for (const b of bytes) this.backlog.push(b);
    this.fillFifo();
    this.update();
  }

  /** Input bytes not yet read by the guest: hosts use it for flow control. */
  get rxWaiting(): number {
    return this.rx.length + this.backlog.length;
  }

  /** The driver listens: received-data interrupts are enabled. */
  get rxInterruptEnabled(): boolean {
    return (this.ier & IER_RDA) !== 0;
  }

  read(offset: number, size: number): bigint {
    if (size !== 1) return 0n;
    let v = 0;
    switch (offset) {
      case 0:
        if (this.lcr & LCR_DLAB) v = this.dll;
        else {
          v = this.rx.shift() ?? 0;
          this.fillFifo();
        }
        break;
      case 1: v = this.lcr & LCR_DLAB ? this.dlm : this.ier; break;
      case 2: {
        v = this.iir();
        // Reading IIR acknowledges a THR-empty interrupt it reports.
        if ((v & 0x0f) === IIR_THRE) this.thrIpending = false;
        break;
      }
      case 3: v = this.lcr; break;
      case 4: v = this.mcr; break;
      case 5:
        v = (this.rx.length > 0 ? LSR_DR : 0) | (this.overrun ? LSR_OE : 0) | LSR_THRE | LSR_TEMT;
        this.overrun = false; // error bits clear on read
        break;
      case 6: v = this.msr(); break;
      case 7: v = this.scr; break;
    }
    this.update();
    return BigInt(v);
  }

  write(offset: number, size: number, value: bigint): void {
    if (size !== 1) return;
    const v = Number(value & 0xffn);
    switch (offset) {
      case 0:
        if (this.lcr & LCR_DLAB) { this.dll = v; break; }
        if (this.mcr & MCR_LOOP) this.receive(Uint8Array.of(v));
        else this.host.transmit(v);
        // Sent at once: the holding register is empty again.
        this.thrIpending = true;
        break;
      case 1:
        if (this.lcr & LCR_DLAB) { this.dlm = v; break; }
        // Enabling THRE interrupts while the THR is empty raises one at once.
        if ((v & IER_THRE) && !(this.ier & IER_THRE)) this.thrIpending = true;
        this.ier = v & 0x0f;
        break;
      case 2:
        this.fcr = v & 0xc9;
        if (v & FCR_CLEAR_RX) { this.rx = []; this.fillFifo(); }
        break;
      case 3: this.lcr = v; break;
      case 4: this.mcr = v & 0x1f; break;
      case 7: this.scr = v; break;
    }
    this.update();
  }

  private fillFifo(): void {
    const cap = this.fcr & FCR_ENABLE ? RX_FIFO : 1;
    while (this.rx.length < cap && this.backlog.length > 0) this.rx.push(this.backlog.shift()!);
  }

  /** Modem status: in loopback the outputs read back (DTR->DSR, RTS->CTS,
   *  OUT1->RI, OUT2->DCD); otherwise the line is always ready. */
  private msr(): number {
    if (this.mcr & MCR_LOOP) {
      const m = this.mcr;
      return ((m & 0x01) << 5) | ((m & 0x02) << 3) | ((m & 0x04) << 4) | ((m & 0x08) << 4);
    }
    return 0xb0; // DCD, DSR, CTS
  }

  /** Highest-priority pending interrupt (datasheet table "Interrupt Control Functions"). */
  private iir(): number {
    const fifo = this.fcr & FCR_ENABLE ? IIR_FIFO_ENABLED : 0;
    return interruptId(this.ier, this.overrun, this.rx.length > 0, this.thrIpending) | fifo;
  }

  private update(): void {
    const level = (this.iir() & IIR_NONE) === 0;
    if (level !== this.irq) {
      this.irq = level;
      this.host.setIrq(level);
    }
  }
}

/** IIR bits 3..0 for these enables and sources, highest priority first. */
function interruptId(ier: number, overrun: boolean, rxData: boolean, thrIpending: boolean): number {
  if ((ier & IER_RLS) && overrun) return IIR_RLS;
  if ((ier & IER_RDA) && rxData) return IIR_RDA;
  if ((ier & IER_THRE) && thrIpending) return IIR_THRE;
  return IIR_NONE;
}
