// A extension: LR/SC and AMOs (unprivileged spec chapter 8), atomic on the
// shared memory so harts on other worker threads observe them as such.
//
// SC is a compare-and-swap against the value LR saw (spec 8.2 lets an SC fail
// for implementation reasons, and succeed only if no other store intervened;
// comparing the value is the standard emulation of a reservation).

import {
  getX, setX, illegal, status, STATUS_OK, wr, rd, RES_VALID_OFF, RES_ADDR_OFF, RES_VALUE_OFF,
} from "../hart";
import { atomicHost, lastAtomicGpa } from "../memory";

@inline function sext32(v: u32): u64 {
  return <u64>(<i64>(<i32>v));
}

export function execAtomic(insn: u32): void {
  const f3 = (insn >> 12) & 7;
  if (f3 != 2 && f3 != 3) { illegal(insn); return; }
  const rdIdx = (insn >> 7) & 31;
  const rs2 = (insn >> 20) & 31;
  const funct5 = insn >> 27;
  const va = getX((insn >> 15) & 31);
  const wide = f3 == 3;
  const size: u32 = wide ? 8 : 4;

  if (funct5 == 0x02) { // LR
    if (rs2 != 0) { illegal(insn); return; }
    const p = atomicHost(va, size, true);
    if (status != STATUS_OK) return;
    const v: u64 = wide ? atomic.load<u64>(p) : sext32(atomic.load<u32>(p));
    wr(RES_VALID_OFF, wide ? 2 : 1);
    wr(RES_ADDR_OFF, lastAtomicGpa);
    wr(RES_VALUE_OFF, v);
    setX(rdIdx, v);
    return;
  }
  if (funct5 == 0x03) { // SC
    const src = getX(rs2);
    const p = atomicHost(va, size, false);
    if (status != STATUS_OK) return;
    let ok = false;
    if (rd(RES_VALID_OFF) == (wide ? 2 : 1) && rd(RES_ADDR_OFF) == lastAtomicGpa) {
      const expected = rd(RES_VALUE_OFF);
      if (wide) ok = atomic.cmpxchg<u64>(p, expected, src) == expected;
      else ok = atomic.cmpxchg<u32>(p, <u32>expected, <u32>src) == <u32>expected;
    }
    // Any SC, successful or not, ends the reservation (spec 8.2).
    wr(RES_VALID_OFF, 0);
    setX(rdIdx, ok ? 0 : 1);
    return;
  }
  const src = getX(rs2);
  const p = atomicHost(va, size, false);
  if (status != STATUS_OK) return;
  let old: u64;
  if (wide) {
    switch (funct5) {
      case 0x01: old = atomic.xchg<u64>(p, src); break;
      case 0x00: old = atomic.add<u64>(p, src); break;
      case 0x04: old = atomic.xor<u64>(p, src); break;
      case 0x0c: old = atomic.and<u64>(p, src); break;
      case 0x08: old = atomic.or<u64>(p, src); break;
      case 0x10: case 0x14: case 0x18: case 0x1c: old = amoMinMax64(p, src, funct5); break;
      default: illegal(insn); return;
    }
  } else {
    const s = <u32>src;
    switch (funct5) {
      case 0x01: old = sext32(atomic.xchg<u32>(p, s)); break;
      case 0x00: old = sext32(atomic.add<u32>(p, s)); break;
      case 0x04: old = sext32(atomic.xor<u32>(p, s)); break;
      case 0x0c: old = sext32(atomic.and<u32>(p, s)); break;
      case 0x08: old = sext32(atomic.or<u32>(p, s)); break;
      case 0x10: case 0x14: case 0x18: case 0x1c: old = sext32(amoMinMax32(p, s, funct5)); break;
      default: illegal(insn); return;
    }
  }
  setX(rdIdx, old);
}

// AMOMIN/AMOMAX/AMOMINU/AMOMAXU (funct5 0x10, 0x14, 0x18, 0x1c) as CAS loops.
function pick64(cur: u64, src: u64, funct5: u32): u64 {
  if (funct5 == 0x10) return <i64>src < <i64>cur ? src : cur;
  if (funct5 == 0x14) return <i64>src > <i64>cur ? src : cur;
  if (funct5 == 0x18) return src < cur ? src : cur;
  return src > cur ? src : cur;
}
function amoMinMax64(p: usize, src: u64, funct5: u32): u64 {
  while (true) {
    const cur = atomic.load<u64>(p);
    if (atomic.cmpxchg<u64>(p, cur, pick64(cur, src, funct5)) == cur) return cur;
  }
  return 0;
}
function pick32(cur: u32, src: u32, funct5: u32): u32 {
  if (funct5 == 0x10) return <i32>src < <i32>cur ? src : cur;
  if (funct5 == 0x14) return <i32>src > <i32>cur ? src : cur;
  if (funct5 == 0x18) return src < cur ? src : cur;
  return src > cur ? src : cur;
}
function amoMinMax32(p: usize, src: u32, funct5: u32): u32 {
  while (true) {
    const cur = atomic.load<u32>(p);
    if (atomic.cmpxchg<u32>(p, cur, pick32(cur, src, funct5)) == cur) return cur;
  }
  return 0;
}
