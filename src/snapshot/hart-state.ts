// A hart's state in a snapshot: its block in shared memory (core hart.ts)
// without what is host-specific. The block is plain data by design, so the
// architectural part is saved as bytes, and restore checks the fields the
// core trusts (privilege, rounding mode, satp mode, the reservation) before
// writing them into a new block. Host addresses (the p2m table, the
// translation cache, the time floor, the dirty log) and the TLB are not
// saved: restore points the block at the new VM's and flushes the TLB.
//
// HART_LAYOUT names the layout of the saved ranges; hart-state.test.ts checks
// the offsets below against src/core/hart.ts, so a change there fails the
// test until this file (and HART_LAYOUT) follow.

import type { Core } from "../vcpu/core.js";
import { bytes, type Plain, type StateReader } from "./state.js";

export const HART_LAYOUT = 2;

/** Offsets in the hart block (src/core/hart.ts). */
export const HART_OFFSETS = {
  X_OFF: 0, F_OFF: 256, PC_OFF: 512, PRIV_OFF: 520, FFLAGS_OFF: 528, FRM_OFF: 536, MSTATUS_OFF: 544,
  SATP_OFF: 704, MHARTID_OFF: 752, RES_VALID_OFF: 784, RES_VALUE_OFF: 800,
  P2M_TABLE_OFF: 808, SBI_MODE_OFF: 832, TICK_INSNS_OFF: 848, TICK_LEFT_OFF: 856, RUN_REASON_OFF: 864,
  RUN_SIZE_OFF: 888, RUN_WRITE_OFF: 896, RUN_MMIO_DONE_OFF: 904, WAITING_OFF: 920, CTX_FETCH_OFF: 928, REQ_OFF: 976,
  MMIO_KEY_ADDR_OFF: 1000, MMIO_KEY_ACCESS_OFF: 1008,
} as const;

const O = HART_OFFSETS;
/** Architectural state up to the p2m fields: registers, CSRs, timers, lines, reservation. */
const ARCH = { from: O.X_OFF, to: O.P2M_TABLE_OFF };
/** Hypervisor configuration of the hart and its run record (an MMIO read answered, not yet retired). */
const RUN = { from: O.SBI_MODE_OFF, to: O.CTX_FETCH_OFF };
/** The access a pending MMIO completion belongs to (layout 2 on). */
const MMIO_KEY = { from: O.MMIO_KEY_ADDR_OFF, to: O.MMIO_KEY_ACCESS_OFF + 8 };

/** REQ_* bits worth keeping (pending SSIP, interrupt re-check); REQ_EXIT and TLB flushes are the old host's. */
const KEPT_REQUESTS = 0x3;

export function saveHart(core: Core, h: number): Plain {
  const mem = new Uint8Array(core.memory.buffer);
  const req = Atomics.load(new Int32Array(core.memory.buffer), (h + O.REQ_OFF) >>> 2) & KEPT_REQUESTS;
  return {
    layout: HART_LAYOUT,
    arch: bytes(mem.slice(h + ARCH.from, h + ARCH.to)),
    run: bytes(mem.slice(h + RUN.from, h + RUN.to)),
    mmioKey: bytes(mem.slice(h + MMIO_KEY.from, h + MMIO_KEY.to)),
    requests: req,
  };
}

/**
 * Check saved hart state and write it into block `h` (a hart of the new VM,
 * already set up with its p2m, time floor and translation cache, which this
 * leaves alone). `index` is the hart's place in the VM: its mhartid.
 */
export function restoreHart(core: Core, h: number, index: number, r: StateReader): void {
  const layout = r.int("layout", 0, 1 << 30);
  r.check(layout === HART_LAYOUT, `hart state layout ${layout}; this tsvisor saves layout ${HART_LAYOUT}`);
  const arch = r.bytes("arch", ARCH.to - ARCH.from);
  const run = r.bytes("run", RUN.to - RUN.from);
  const mmioKey = r.bytes("mmioKey", MMIO_KEY.to - MMIO_KEY.from);
  r.check(arch.length === ARCH.to - ARCH.from && run.length === RUN.to - RUN.from && mmioKey.length === MMIO_KEY.to - MMIO_KEY.from, "hart state of the wrong size");
  const requests = r.int("requests", 0, KEPT_REQUESTS);
  const a = new DataView(arch.buffer, arch.byteOffset, arch.length);
  const at = (off: number) => a.getBigUint64(off - ARCH.from, true);
  const priv = at(O.PRIV_OFF);
  r.check(priv === 0n || priv === 1n || priv === 3n, `privilege level ${priv} (U, S or M: 0, 1, 3)`);
  r.check((at(O.PC_OFF) & 1n) === 0n, "pc is odd");
  r.check(at(O.FRM_OFF) <= 7n && at(O.FFLAGS_OFF) <= 31n, "fcsr out of range");
  const satpMode = at(O.SATP_OFF) >> 60n;
  r.check(satpMode === 0n || satpMode === 8n || satpMode === 9n || satpMode === 10n, `satp mode ${satpMode} (Bare, Sv39, Sv48 or Sv57)`);
  r.check(at(O.MHARTID_OFF) === BigInt(index), `mhartid ${at(O.MHARTID_OFF)} for hart ${index}`);
  // 0 none, 1 after LR.W, 2 after LR.D (core isa/a.ts): an SC must match the width.
  r.check(at(O.RES_VALID_OFF) <= 2n, `LR reservation flag ${at(O.RES_VALID_OFF)} (0 none, 1 LR.W, 2 LR.D)`);
  // mstatus: XLEN fixed at 64 (UXL = SXL = 2), MPP never 2 (privileged spec 3.1.6).
  const ms = at(O.MSTATUS_OFF);
  r.check(((ms >> 32n) & 0xfn) === 0xan && ((ms >> 11n) & 3n) !== 2n, `mstatus 0x${ms.toString(16)} is not a legal value`);
  const d = new DataView(run.buffer, run.byteOffset, run.length);
  const rat = (off: number) => d.getBigUint64(off - RUN.from, true);
  r.check(rat(O.SBI_MODE_OFF) <= 1n && rat(O.WAITING_OFF) <= 1n, "hart flags not 0 or 1");
  // 0 none, 1 completed, 2 no device there (core exit.ts).
  r.check(rat(O.RUN_MMIO_DONE_OFF) <= 2n, `MMIO completion ${rat(O.RUN_MMIO_DONE_OFF)} (0, 1 or 2)`);
  r.check(rat(O.TICK_INSNS_OFF) >= 1n && rat(O.TICK_INSNS_OFF) < 1n << 32n && rat(O.TICK_LEFT_OFF) <= rat(O.TICK_INSNS_OFF), "timer tick settings out of range");
  const size = rat(O.RUN_SIZE_OFF);
  r.check(size === 0n || size === 1n || size === 2n || size === 4n || size === 8n, `run record access size ${size}`);
  r.check(rat(O.RUN_WRITE_OFF) <= 2n, "run record access kind out of range");

  const mem = new Uint8Array(core.memory.buffer);
  mem.set(arch, h + ARCH.from);
  mem.set(run, h + RUN.from);
  mem.set(mmioKey, h + MMIO_KEY.from);
  core.fn.setPriv(h, Number(priv));
  core.fn.tlbFlush(h);
  if (requests) core.fn.postRequest(h, requests);
}
