// The SBI (RISC-V Supervisor Binary Interface, v2.0) implemented by the
// hypervisor itself: an ECALL from the guest kernel in S-mode is a hypercall
// (EXIT_SBI), handled here instead of by M-mode firmware, as KVM does for its
// guests. Calling convention (SBI spec chapter 3): a7 = extension ID (EID),
// a6 = function ID (FID), a0..a5 = arguments; the result is a0 = error code,
// a1 = value.
//
// The handlers see the machine only through SbiPlatform, so they are plain
// functions of their inputs and can be tested without a guest.

// Standard error codes (SBI spec, table "Standard SBI Errors").
export const SBI_SUCCESS = 0n;
export const SBI_ERR_FAILED = -1n;
export const SBI_ERR_NOT_SUPPORTED = -2n;
export const SBI_ERR_INVALID_PARAM = -3n;
export const SBI_ERR_DENIED = -4n;
export const SBI_ERR_INVALID_ADDRESS = -5n;
export const SBI_ERR_ALREADY_AVAILABLE = -6n;
export const SBI_ERR_ALREADY_STARTED = -7n;
export const SBI_ERR_ALREADY_STOPPED = -8n;

// Extension IDs.
export const EID_BASE = 0x10n;
export const EID_TIME = 0x54494d45n; //  "TIME"
export const EID_IPI = 0x735049n; //     "sPI"
export const EID_RFENCE = 0x52464e43n; // "RFNC"
export const EID_HSM = 0x48534dn; //     "HSM"
export const EID_SRST = 0x53525354n; //  "SRST"
export const EID_DBCN = 0x4442434en; //  "DBCN"

/** SBI specification version 2.0: major in bits 30:24, minor in 23:0. */
export const SBI_SPEC_VERSION = 2n << 24n;
/** Implementation ID. IDs are assigned in the SBI spec; tsvisor has none, so it
 *  uses a value outside the assigned range ("ts"). */
export const SBI_IMPL_ID = 0x7473n;
export const SBI_IMPL_VERSION = 1n;

/** HSM hart states (SBI spec, HSM chapter, table "HSM Hart States"). */
export enum HartState {
  Started = 0,
  Stopped = 1,
  StartPending = 2,
  StopPending = 3,
  Suspended = 4,
}

export type ResetType = "shutdown" | "cold-reboot" | "warm-reboot";

/** What the machine offers the SBI handlers. Hart IDs are 0..hartCount-1. */
export interface SbiPlatform {
  readonly hartCount: number;
  /** Program the S-mode timer of `hartId` (stimecmp) and clear a pending one. */
  setTimer(hartId: number, stimeValue: bigint): void;
  /** Raise the supervisor software interrupt (SSIP) on each hart. */
  sendIpi(hartIds: number[]): void;
  /** Drop cached translations on each hart (SFENCE.VMA there); FENCE.I likewise. */
  remoteFence(hartIds: number[], kind: "fence.i" | "sfence.vma"): void;
  hartState(hartId: number): HartState;
  /** Start a stopped hart in S-mode at `startAddr`, a0 = hartid, a1 = opaque, satp = 0, SIE = 0. */
  startHart(hartId: number, startAddr: bigint, opaque: bigint): void;
  /** Is [gpa, gpa + len) guest RAM? */
  isRam(gpa: bigint, len: number): boolean;
  readGuest(gpa: bigint, len: number): Uint8Array;
  writeGuest(gpa: bigint, bytes: Uint8Array): void;
  consoleWrite(bytes: Uint8Array): void;
  /** Up to `max` bytes of pending console input (possibly none). */
  consoleRead(max: number): Uint8Array;
}

/** The calling hart's registers. */
export interface SbiCaller {
  readonly hartId: number;
  getX(i: number): bigint;
  setX(i: number, v: bigint): void;
}

/** What the vCPU loop must do after the call. */
export type SbiOutcome =
  | { kind: "continue" }
  /** The caller stopped itself (HSM hart_stop). */
  | { kind: "hart-stopped" }
  /** Retentive suspend: the hart waits for an interrupt, like WFI. */
  | { kind: "hart-suspended" }
  | { kind: "reset"; type: ResetType; systemFailure: boolean };

const CONTINUE: SbiOutcome = { kind: "continue" };
const A0 = 10, A1 = 11, A6 = 16, A7 = 17;
const U64 = (v: bigint) => BigInt.asUintN(64, v);

/** Per-VM call counts by extension, for --stats. */
export class SbiStats {
  readonly calls = new Map<string, number>();
  count(ext: string): void {
    this.calls.set(ext, (this.calls.get(ext) ?? 0) + 1);
  }
}

const EXTENSION_NAMES = new Map<bigint, string>([
  [EID_BASE, "base"], [EID_TIME, "time"], [EID_IPI, "ipi"], [EID_RFENCE, "rfence"],
  [EID_HSM, "hsm"], [EID_SRST, "srst"], [EID_DBCN, "dbcn"],
]);

/** Handle the SBI call in the caller's registers; writes a0/a1 unless the call
 *  does not return (hart_stop, system reset). */
export function handleSbiCall(caller: SbiCaller, platform: SbiPlatform, stats?: SbiStats): SbiOutcome {
  const eid = U64(caller.getX(A7));
  const fid = U64(caller.getX(A6));
  const args = [0, 1, 2, 3, 4, 5].map((i) => U64(caller.getX(A0 + i)));
  stats?.count(EXTENSION_NAMES.get(eid) ?? "unsupported");
  let result: { error: bigint; value?: bigint; outcome?: SbiOutcome };
  switch (eid) {
    case EID_BASE: result = base(fid, args); break;
    case EID_TIME: result = time(caller, platform, fid, args); break;
    case EID_IPI: result = ipi(platform, fid, args); break;
    case EID_RFENCE: result = rfence(platform, fid, args); break;
    case EID_HSM: result = hsm(caller, platform, fid, args); break;
    case EID_SRST: result = srst(fid, args); break;
    case EID_DBCN: result = dbcn(platform, fid, args); break;
    default: result = { error: SBI_ERR_NOT_SUPPORTED };
  }
  const outcome = result.outcome ?? CONTINUE;
  if (outcome.kind === "continue" || outcome.kind === "hart-suspended") {
    caller.setX(A0, U64(result.error));
    if (result.value !== undefined) caller.setX(A1, U64(result.value));
  }
  return outcome;
}

// ---- BASE (SBI spec chapter 4) -------------------------------------------------

function base(fid: bigint, args: bigint[]) {
  switch (fid) {
    case 0n: return { error: SBI_SUCCESS, value: SBI_SPEC_VERSION };
    case 1n: return { error: SBI_SUCCESS, value: SBI_IMPL_ID };
    case 2n: return { error: SBI_SUCCESS, value: SBI_IMPL_VERSION };
    case 3n: return { error: SBI_SUCCESS, value: EXTENSION_NAMES.has(args[0]) ? 1n : 0n }; // probe_extension
    case 4n: case 5n: case 6n: return { error: SBI_SUCCESS, value: 0n }; // mvendorid, marchid, mimpid
  }
  return { error: SBI_ERR_NOT_SUPPORTED };
}

// ---- TIME (chapter 6) ------------------------------------------------------------

function time(caller: SbiCaller, platform: SbiPlatform, fid: bigint, args: bigint[]) {
  if (fid !== 0n) return { error: SBI_ERR_NOT_SUPPORTED };
  platform.setTimer(caller.hartId, args[0]);
  return { error: SBI_SUCCESS };
}

// ---- hart masks (chapter 3: hart_mask, hart_mask_base) ---------------------------

/** The harts named by (hart_mask, hart_mask_base); undefined if one is invalid.
 *  A base of all ones means every hart. */
function hartsOf(platform: SbiPlatform, mask: bigint, maskBase: bigint): number[] | undefined {
  const all = [...Array(platform.hartCount).keys()];
  if (maskBase === 0xffff_ffff_ffff_ffffn) return all;
  const out: number[] = [];
  for (let bit = 0n; bit < 64n; bit++) {
    if (((mask >> bit) & 1n) === 0n) continue;
    const id = maskBase + bit;
    if (id >= BigInt(platform.hartCount)) return undefined;
    out.push(Number(id));
  }
  return out;
}

// ---- IPI (chapter 7) --------------------------------------------------------------

function ipi(platform: SbiPlatform, fid: bigint, args: bigint[]) {
  if (fid !== 0n) return { error: SBI_ERR_NOT_SUPPORTED };
  const harts = hartsOf(platform, args[0], args[1]);
  if (!harts) return { error: SBI_ERR_INVALID_PARAM };
  platform.sendIpi(harts);
  return { error: SBI_SUCCESS };
}

// ---- RFENCE (chapter 8) -------------------------------------------------------------

function rfence(platform: SbiPlatform, fid: bigint, args: bigint[]) {
  // 0 remote_fence_i, 1 remote_sfence_vma, 2 remote_sfence_vma_asid; the
  // hypervisor fences (3..6) need the H extension, which guests do not get.
  if (fid > 2n) return { error: SBI_ERR_NOT_SUPPORTED };
  const harts = hartsOf(platform, args[0], args[1]);
  if (!harts) return { error: SBI_ERR_INVALID_PARAM };
  // Each hart's TLB is flushed whole: a range or ASID only narrows what must go.
  platform.remoteFence(harts, fid === 0n ? "fence.i" : "sfence.vma");
  return { error: SBI_SUCCESS };
}

// ---- HSM (chapter 9) ----------------------------------------------------------------

function hsm(caller: SbiCaller, platform: SbiPlatform, fid: bigint, args: bigint[]) {
  switch (fid) {
    case 0n: { // hart_start(hartid, start_addr, opaque)
      if (args[0] >= BigInt(platform.hartCount)) return { error: SBI_ERR_INVALID_PARAM };
      const id = Number(args[0]);
      if (platform.hartState(id) !== HartState.Stopped) return { error: SBI_ERR_ALREADY_AVAILABLE };
      if (!platform.isRam(args[1], 4)) return { error: SBI_ERR_INVALID_ADDRESS };
      platform.startHart(id, args[1], args[2]);
      return { error: SBI_SUCCESS };
    }
    case 1n: // hart_stop: does not return on success
      return { error: SBI_SUCCESS, outcome: { kind: "hart-stopped" } as SbiOutcome };
    case 2n: // hart_get_status(hartid)
      if (args[0] >= BigInt(platform.hartCount)) return { error: SBI_ERR_INVALID_PARAM };
      return { error: SBI_SUCCESS, value: BigInt(platform.hartState(Number(args[0]))) };
    case 3n: { // hart_suspend(suspend_type, resume_addr, opaque)
      const type = args[0] & 0xffff_ffffn;
      if (type === 0n) return { error: SBI_SUCCESS, outcome: { kind: "hart-suspended" } as SbiOutcome };
      // Default non-retentive suspend is a valid type this platform does not
      // offer (it would lose no power anyway): NOT_SUPPORTED, per the spec's
      // error table, so the guest falls back to retentive suspend or WFI.
      if (type === 0x8000_0000n) return { error: SBI_ERR_NOT_SUPPORTED };
      return { error: SBI_ERR_INVALID_PARAM };
    }
  }
  return { error: SBI_ERR_NOT_SUPPORTED };
}

// ---- SRST (chapter 10) ---------------------------------------------------------------

function srst(fid: bigint, args: bigint[]) {
  if (fid !== 0n) return { error: SBI_ERR_NOT_SUPPORTED };
  const types: ResetType[] = ["shutdown", "cold-reboot", "warm-reboot"];
  const type = args[0] < 3n ? types[Number(args[0])] : undefined;
  // Reasons: 0 no reason, 1 system failure; others reserved or vendor-specific.
  if (!type || (args[1] > 1n && args[1] < 0xf000_0000n)) return { error: SBI_ERR_INVALID_PARAM };
  return { error: SBI_SUCCESS, outcome: { kind: "reset", type, systemFailure: args[1] === 1n } as SbiOutcome };
}

// ---- DBCN, debug console (chapter 12) -------------------------------------------------

function dbcn(platform: SbiPlatform, fid: bigint, args: bigint[]) {
  if (fid === 2n) { // console_write_byte(byte)
    platform.consoleWrite(Uint8Array.of(Number(args[0] & 0xffn)));
    return { error: SBI_SUCCESS };
  }
  if (fid !== 0n && fid !== 1n) return { error: SBI_ERR_NOT_SUPPORTED };
  const [numBytes, lo, hi] = args;
  // base_addr_hi holds bits above XLEN: nothing can live there on RV64.
  if (hi !== 0n) return { error: SBI_ERR_INVALID_PARAM };
  // Bound a single call so a hostile length cannot make the host copy gigabytes.
  const n = Number(numBytes > 0x10_0000n ? 0x10_0000n : numBytes);
  if (n > 0 && !platform.isRam(lo, n)) return { error: SBI_ERR_INVALID_PARAM };
  if (fid === 0n) { // console_write
    if (n > 0) platform.consoleWrite(platform.readGuest(lo, n));
    return { error: SBI_SUCCESS, value: BigInt(n) };
  }
  const input = platform.consoleRead(n); // console_read
  if (input.length > 0) platform.writeGuest(lo, input);
  return { error: SBI_SUCCESS, value: BigInt(input.length) };
}

