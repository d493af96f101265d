// A virtio-mmio transport's InterruptStatus (virtio 1.2, 4.2.2) and the
// interrupt line that follows it. In a host the word is shared memory that
// three threads change: the main thread's transport, a vCPU's worker
// answering InterruptACK, and a disk's I/O thread raising its completion
// (host/irqfd.ts). Each changes the word atomically, then has the line
// follow it through `line`, which reads the word under the PLIC's lock
// (plic.ts setLevelFrom): whichever thread takes the lock last sees the
// latest word, so the line is never left at a level computed from a stale one.

export class InterruptStatus {
  /** `line(high)`: drive the line to `high()`, evaluated where no other thread moves it meanwhile. */
  constructor(private readonly words: Int32Array, private readonly index: number, private readonly line: (high: () => boolean) => void) {}

  get value(): number {
    return Atomics.load(this.words, this.index) >>> 0;
  }

  /** Set `bits` (a used buffer, a configuration change), then the line follows. */
  raise(bits: number): void {
    Atomics.or(this.words, this.index, bits);
    this.sync();
  }

  /** The driver's InterruptACK: clear `bits`, then the line follows. */
  acknowledge(bits: number): void {
    Atomics.and(this.words, this.index, ~bits);
    this.sync();
  }

  /** Replace the word (a reset, a restored snapshot); sync() drives the line when the caller is ready. */
  store(value: number): void {
    Atomics.store(this.words, this.index, value);
  }

  /** The line follows the word. */
  sync(): void {
    this.line(() => Atomics.load(this.words, this.index) !== 0);
  }
}
