// Zicntr counters (cycle, instret; time lives in hart.ts TIME_OFF) with
// mcountinhibit (privileged spec 3.1.10, 3.1.12).
//
// During run() the core counts retired instructions in `retiredThisRun`; the
// counters are stored as a base plus the part of that count since the last
// fold, so retiring an instruction costs one increment of a local, not two
// memory updates. One instruction per cycle: mcycle advances with minstret.

import { rd, wr, MCYCLE_OFF, MINSTRET_OFF, MCOUNTINHIBIT_OFF } from "./hart";

export let retiredThisRun: u64 = 0;
let foldPoint: u64 = 0;

export function beginRunCounting(): void {
  retiredThisRun = 0;
  foldPoint = 0;
}

@inline export function countRetired(): void {
  retiredThisRun++;
}

@inline export function retiredThisRunAdd(n: u32): void {
  retiredThisRun += <u64>n;
}

/** Current value of mcycle (off = MCYCLE_OFF, bit 0) or minstret (MINSTRET_OFF, bit 2). */
export function counterValue(off: u32, inhibitBit: u64): u64 {
  const inhibited = (rd(MCOUNTINHIBIT_OFF) & inhibitBit) != 0;
  return rd(off) + (inhibited ? 0 : retiredThisRun - foldPoint);
}

/** Store the counters' current values as their bases. */
export function foldCounters(): void {
  wr(MCYCLE_OFF, counterValue(MCYCLE_OFF, 1));
  wr(MINSTRET_OFF, counterValue(MINSTRET_OFF, 4));
  foldPoint = retiredThisRun;
}

/** A CSR write of a counter: the written value is what the next instruction sees,
 *  so the writing instruction's own retirement must not add to it (spec 3.1.11). */
export function writeCounter(off: u32, inhibitBit: u64, v: u64): void {
  foldCounters();
  const inhibited = (rd(MCOUNTINHIBIT_OFF) & inhibitBit) != 0;
  wr(off, inhibited ? v : v - 1);
}

export function writeCountInhibit(v: u64): void {
  foldCounters();
  wr(MCOUNTINHIBIT_OFF, v & 5); // CY and IR; no hpm counters (no Zihpm)
}
