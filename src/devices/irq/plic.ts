// Platform-Level Interrupt Controller (RISC-V PLIC specification 1.0.0), laid
// out as on QEMU's riscv `virt` machine, so the stock Linux driver
// (sifive,plic-1.0.0) works unchanged:
//
//   0x000000 + 4*s          priority of source s (1..NUM_SOURCES; 0 = never)
//   0x001000 + 4*(s/32)     pending bits (read-only)
//   0x002000 + 0x80*c       enable bits of context c
//   0x200000 + 0x1000*c     threshold of context c
//   0x200004 + 0x1000*c     claim (read) / complete (write) of context c
//
// Contexts come in pairs per hart: 2h is hart h's M-mode (drives MEIP), 2h+1
// its S-mode (drives SEIP). Sources are level-triggered: the gateway turns a
// high line into a pending bit, and forwards it again only after the claim was
// completed (PLIC spec chapter "Interrupt Gateways").
//
// The state lives in one SharedArrayBuffer behind a lock, so that the
// thread running a vCPU can answer its claims and completions itself, as
// KVM's in-kernel irqchip does, instead of an exit to the main thread for
// each (a disk request takes four); the devices' lines change on the main
// thread. Each thread drives the outputs through its own callback.

import type { MmioDevice } from "../../bus/mmio-bus.js";
import type { Plain, StateReader } from "../../snapshot/state.js";

export const PLIC_NUM_SOURCES = 127;
export const PLIC_MAX_PRIORITY = 7;
const PENDING_BASE = 0x1000;
const ENABLE_BASE = 0x2000;
const ENABLE_STRIDE = 0x80;
const CONTEXT_BASE = 0x200000;
const CONTEXT_STRIDE = 0x1000;
const WORDS = Math.ceil((PLIC_NUM_SOURCES + 1) / 32);

/** Size of the register window for `harts` harts (two contexts each). */
export function plicSize(harts: number): bigint {
  return BigInt(CONTEXT_BASE + 2 * harts * CONTEXT_STRIDE);
}

/** Where a context's output goes: a hart's external-interrupt line. */
export type ContextOutput = (context: number, level: boolean) => void;

/** u32 words of the shared state: the lock, priorities, the source bit
 *  sets, then per context its enable words, threshold and output level. */
function stateWords(contexts: number): number {
  return 1 + (PLIC_NUM_SOURCES + 1) + 3 * WORDS + contexts * (WORDS + 2);
}

export class Plic implements MmioDevice {
  readonly name = "plic";
  /** The state's buffer, for another thread's Plic over the same state. */
  readonly buffer: SharedArrayBuffer;
  private readonly lockWord: Int32Array;
  private readonly priority: Uint32Array;
  private readonly pending: Uint32Array;
  private readonly claimed: Uint32Array; // in service: claimed, not completed
  private readonly level: Uint32Array; //   current line levels
  private readonly enable: Uint32Array[];
  private readonly threshold: Uint32Array;
  private readonly outputs: Uint32Array; // the level each context's output was last driven to
  private depth = 0;

  /** A PLIC with `contexts` contexts; over `shared` (another Plic's buffer) it is that PLIC, seen from this thread. */
  constructor(readonly contexts: number, private readonly output: ContextOutput, shared?: SharedArrayBuffer) {
    const bytes = 4 * stateWords(contexts);
    if (shared !== undefined && shared.byteLength !== bytes) throw new RangeError(`a PLIC state of ${shared.byteLength} bytes for ${contexts} contexts`);
    this.buffer = shared ?? new SharedArrayBuffer(bytes);
    let at = 0;
    const words = (n: number) => {
      const v = new Uint32Array(this.buffer, 4 * at, n);
      at += n;
      return v;
    };
    this.lockWord = new Int32Array(this.buffer, 0, 1);
    at = 1;
    this.priority = words(PLIC_NUM_SOURCES + 1);
    this.pending = words(WORDS);
    this.claimed = words(WORDS);
    this.level = words(WORDS);
    this.enable = Array.from({ length: contexts }, () => words(WORDS));
    this.threshold = words(contexts);
    this.outputs = words(contexts);
  }

  /** `body` with the state to itself: the other thread's accesses are a few
   *  microseconds at most, so a spin is enough. Reentrant (an output
   *  callback may not call back, but restoreState runs update()). */
  private locked<T>(body: () => T): T {
    if (this.depth > 0) return body();
    while (Atomics.compareExchange(this.lockWord, 0, 0, 1) !== 0) {}
    this.depth++;
    try {
      return body();
    } finally {
      this.depth--;
      Atomics.store(this.lockWord, 0, 0);
    }
  }

  /** A device's interrupt line changed. */
  setLevel(source: number, high: boolean): void {
    this.setLevelFrom(source, () => high);
  }

  /**
   * A device's line follows `high()`, read under the lock. For a line whose
   * cause several threads change (a virtio transport's InterruptStatus, set
   * by an I/O thread, acknowledged by a vCPU's): each changes the cause, then
   * calls this; whichever takes the lock last reads the latest cause, so the
   * line never stays at a level a slower thread computed from a stale one.
   */
  setLevelFrom(source: number, high: () => boolean): void {
    if (source < 1 || source > PLIC_NUM_SOURCES) throw new RangeError(`PLIC source ${source} does not exist`);
    this.locked(() => {
      const [w, b] = [source >> 5, 1 << (source & 31)];
      if (high()) this.level[w] |= b;
      else this.level[w] &= ~b;
      this.gateway(source);
      this.update();
    });
  }

  read(offset: number, size: number): bigint {
    return this.locked(() => this.readLocked(offset, size));
  }

  write(offset: number, size: number, value: bigint): void {
    this.locked(() => this.writeLocked(offset, size, value));
  }

  private readLocked(offset: number, size: number): bigint {
    if (size !== 4 || (offset & 3) !== 0) return 0n; // registers are 32-bit words
    if (offset < PENDING_BASE) {
      const s = offset >> 2;
      return s <= PLIC_NUM_SOURCES ? BigInt(this.priority[s]) : 0n;
    }
    if (offset < ENABLE_BASE) {
      const w = (offset - PENDING_BASE) >> 2;
      return w < WORDS ? BigInt(this.pending[w]) : 0n;
    }
    if (offset < CONTEXT_BASE) {
      const c = Math.floor((offset - ENABLE_BASE) / ENABLE_STRIDE);
      const w = ((offset - ENABLE_BASE) % ENABLE_STRIDE) >> 2;
      return c < this.contexts && w < WORDS ? BigInt(this.enable[c][w]) : 0n;
    }
    const c = Math.floor((offset - CONTEXT_BASE) / CONTEXT_STRIDE);
    const reg = (offset - CONTEXT_BASE) % CONTEXT_STRIDE;
    if (c >= this.contexts) return 0n;
    if (reg === 0) return BigInt(this.threshold[c]);
    if (reg === 4) return BigInt(this.claim(c));
    return 0n;
  }

  private writeLocked(offset: number, size: number, value: bigint): void {
    if (size !== 4 || (offset & 3) !== 0) return;
    const v = Number(value & 0xffff_ffffn);
    if (offset < PENDING_BASE) {
      const s = offset >> 2;
      // Priorities are WARL: 0..7; source 0 does not exist.
      if (s >= 1 && s <= PLIC_NUM_SOURCES) this.priority[s] = Math.min(v, PLIC_MAX_PRIORITY);
    } else if (offset < ENABLE_BASE) {
      return; // pending bits are read-only
    } else if (offset < CONTEXT_BASE) {
      const c = Math.floor((offset - ENABLE_BASE) / ENABLE_STRIDE);
      const w = ((offset - ENABLE_BASE) % ENABLE_STRIDE) >> 2;
      if (c < this.contexts && w < WORDS) this.enable[c][w] = w === 0 ? v & ~1 : v; // source 0 hardwired off
    } else {
      const c = Math.floor((offset - CONTEXT_BASE) / CONTEXT_STRIDE);
      const reg = (offset - CONTEXT_BASE) % CONTEXT_STRIDE;
      if (c >= this.contexts) return;
      if (reg === 0) this.threshold[c] = Math.min(v, PLIC_MAX_PRIORITY);
      else if (reg === 4) this.complete(c, v);
    }
    this.update();
  }

  /** Plain state: every register and the gateway's bits (u32 words of
   *  source bits). The output callback is wiring, rebuilt by the machine. */
  saveState(): Plain {
    return this.locked(() => ({
      priority: [...this.priority],
      pending: [...this.pending],
      claimed: [...this.claimed],
      level: [...this.level],
      enable: this.enable.flatMap((e) => [...e]), // context c's words at [c * WORDS, (c + 1) * WORDS)
      threshold: [...this.threshold],
    }));
  }

  /** Restore saveState()'s value (untrusted: checked in full before anything
   *  changes), then drive every context's output from it. */
  restoreState(r: StateReader): void {
    const words = (key: string) => {
      const v = r.ints(key, WORDS, 0, 0xffff_ffff);
      r.check(v.length === WORDS, `${key}: ${v.length} words, this PLIC has ${WORDS}`);
      r.check((v[0] & 1) === 0, `${key}: source 0 does not exist`);
      return v;
    };
    const priority = r.ints("priority", PLIC_NUM_SOURCES + 1, 0, PLIC_MAX_PRIORITY);
    r.check(priority.length === PLIC_NUM_SOURCES + 1, `priority: ${priority.length} entries, this PLIC has ${PLIC_NUM_SOURCES + 1}`);
    r.check(priority[0] === 0, "priority: source 0 does not exist");
    const pending = words("pending");
    const claimed = words("claimed");
    const level = words("level");
    r.check(pending.every((p, w) => (p & claimed[w]) === 0), "a source is both pending and claimed");
    const enable = r.ints("enable", this.contexts * WORDS, 0, 0xffff_ffff);
    r.check(enable.length === this.contexts * WORDS, `enable: ${enable.length} words, this PLIC has ${this.contexts * WORDS}`);
    r.check(enable.every((e, i) => i % WORDS !== 0 || (e & 1) === 0), "enable: source 0 does not exist");
    const threshold = r.ints("threshold", this.contexts, 0, PLIC_MAX_PRIORITY);
    r.check(threshold.length === this.contexts, `threshold: ${threshold.length} contexts, this PLIC has ${this.contexts}`);
    // Everything checked: apply.
    this.locked(() => this.apply(priority, pending, claimed, level, enable, threshold));
  }

  private apply(priority: number[], pending: number[], claimed: number[], level: number[], enable: number[], threshold: number[]): void {
    this.priority.set(priority);
    this.pending.set(pending);
    this.claimed.set(claimed);
    this.level.set(level);
    this.enable.forEach((e, c) => e.set(enable.slice(c * WORDS, (c + 1) * WORDS)));
    this.threshold.set(threshold);
    for (let c = 0; c < this.contexts; c++) {
      const high = this.best(c) !== 0;
      this.outputs[c] = high ? 1 : 0;
      this.output(c, high);
    }
  }

  /** Claim: the highest-priority pending source enabled for the context above
   *  its threshold (lowest ID on ties), or 0. Clears its pending bit. */
  private claim(c: number): number {
    const s = this.best(c);
    if (s === 0) return 0;
    this.pending[s >> 5] &= ~(1 << (s & 31));
    this.claimed[s >> 5] |= 1 << (s & 31);
    this.update();
    return s;
  }

  /** Complete: the source may be forwarded again (if still enabled for the
   *  context; a completion for a source it cannot see is ignored, per spec). */
  private complete(c: number, s: number): void {
    if (s < 1 || s > PLIC_NUM_SOURCES) return;
    const [w, b] = [s >> 5, 1 << (s & 31)];
    if ((this.enable[c][w] & b) === 0) return;
    this.claimed[w] &= ~b;
    this.gateway(s);
  }

  /** Level-triggered gateway: a high line becomes pending unless in service. */
  private gateway(s: number): void {
    const [w, b] = [s >> 5, 1 << (s & 31)];
    if ((this.level[w] & b) !== 0 && (this.claimed[w] & b) === 0) this.pending[w] |= b;
  }

  private best(c: number): number {
    let best = 0;
    let bestPrio = this.threshold[c];
    for (let w = 0; w < WORDS; w++) {
      let bits = this.pending[w] & this.enable[c][w];
      while (bits !== 0) {
        const bit = 31 - Math.clz32(bits & -bits);
        bits &= bits - 1;
        const s = w * 32 + bit;
        if (this.priority[s] > bestPrio) {
          best = s;
          bestPrio = this.priority[s];
        }
      }
    }
    return best;
  }

  /** Drive each context's output line from its best candidate. */
  private update(): void {
    for (let c = 0; c < this.contexts; c++) {
      const level = this.best(c) !== 0;
      if (level !== (this.outputs[c] === 1)) {
        this.outputs[c] = level ? 1 : 0;
        this.output(c, level);
      }
    }
  }
}
