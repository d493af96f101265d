// The SBI as a guest kernel sees it: each call is made through the registers of
// a fake hart against a fake platform that records what the hypervisor was
// asked to do.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  handleSbiCall, HartState, SbiStats, type SbiCaller, type SbiPlatform,
  EID_BASE, EID_TIME, EID_IPI, EID_RFENCE, EID_HSM, EID_SRST, EID_DBCN,
  SBI_SUCCESS, SBI_ERR_NOT_SUPPORTED, SBI_ERR_INVALID_PARAM, SBI_ERR_INVALID_ADDRESS, SBI_ERR_ALREADY_AVAILABLE,
} from "./sbi.js";

const RAM = 0x8000_0000n;

function fakes(hartCount = 4) {
  const regs = new Array<bigint>(32).fill(0n);
  const log: string[] = [];
  const states = new Array<HartState>(hartCount).fill(HartState.Stopped);
  states[0] = HartState.Started;
  const memory = new Uint8Array(0x1000);
  let input = new TextEncoder().encode("typed");
  const caller: SbiCaller = { hartId: 0, getX: (i) => regs[i], setX: (i, v) => { regs[i] = v; } };
  const platform: SbiPlatform = {
    hartCount,
    setTimer: (h, t) => log.push(`timer ${h} ${t}`),
    sendIpi: (hs) => log.push(`ipi ${hs.join(",")}`),
    remoteFence: (hs, k) => log.push(`${k} ${hs.join(",")}`),
    hartState: (h) => states[h],
    startHart: (h, addr, opaque) => { states[h] = HartState.StartPending; log.push(`start ${h} ${addr.toString(16)} ${opaque}`); },
    isRam: (gpa, len) => gpa >= RAM && gpa + BigInt(len) <= RAM + 0x1000n,
    readGuest: (gpa, len) => memory.slice(Number(gpa - RAM), Number(gpa - RAM) + len),
    writeGuest: (gpa, b) => memory.set(b, Number(gpa - RAM)),
    consoleWrite: (b) => log.push(`console ${new TextDecoder().decode(b)}`),
    consoleRead: (max) => { const r = input.slice(0, max); input = input.slice(max); return r; },
  };
  /** ecall with a7 = eid, a6 = fid, a0.. = args; returns [a0 as signed, a1, outcome]. */
  const call = (eid: bigint, fid: bigint, ...args: bigint[]) => {
    regs[17] = eid; regs[16] = fid;
    args.forEach((a, i) => { regs[10 + i] = BigInt.asUintN(64, a); });
    const outcome = handleSbiCall(caller, platform);
    return { error: BigInt.asIntN(64, regs[10]), value: regs[11], outcome };
  };
  return { call, log, states, memory };
}

test("BASE reports SBI 2.0 and probes exactly the implemented extensions", () => {
  const { call } = fakes();
  assert.deepEqual([call(EID_BASE, 0n).error, call(EID_BASE, 0n).value], [SBI_SUCCESS, 2n << 24n]);
  for (const eid of [EID_TIME, EID_IPI, EID_RFENCE, EID_HSM, EID_SRST, EID_DBCN]) assert.equal(call(EID_BASE, 3n, eid).value, 1n);
  assert.equal(call(EID_BASE, 3n, 0x4e41434cn).value, 0n, "NACL (nested acceleration) is not offered");
  assert.equal(call(EID_BASE, 3n, 0x01n).value, 0n, "legacy console putchar is not offered");
});

test("unknown extensions and functions return SBI_ERR_NOT_SUPPORTED", () => {
  const { call } = fakes();
  assert.equal(call(0x0a000000n, 0n).error, SBI_ERR_NOT_SUPPORTED);
  assert.equal(call(EID_BASE, 99n).error, SBI_ERR_NOT_SUPPORTED);
  assert.equal(call(EID_RFENCE, 3n, 1n, 0n).error, SBI_ERR_NOT_SUPPORTED, "hfence needs the H extension");
});

test("TIME set_timer programs the caller's timer", () => {
  const { call, log } = fakes();
  assert.equal(call(EID_TIME, 0n, 12345n).error, SBI_SUCCESS);
  assert.deepEqual(log, ["timer 0 12345"]);
});

test("IPI and RFENCE decode hart_mask/hart_mask_base, including 'all harts' and invalid harts", () => {
  const { call, log } = fakes(4);
  assert.equal(call(EID_IPI, 0n, 0b101n, 1n).error, SBI_SUCCESS); //   harts 1 and 3
  assert.equal(call(EID_IPI, 0n, 0n, -1n).error, SBI_SUCCESS); //      base -1: all
  assert.equal(call(EID_RFENCE, 1n, 0b11n, 0n, 0n, 4096n).error, SBI_SUCCESS);
  assert.equal(call(EID_RFENCE, 0n, 1n, 0n).error, SBI_SUCCESS);
  assert.equal(call(EID_IPI, 0n, 0b1n, 4n).error, SBI_ERR_INVALID_PARAM, "hart 4 does not exist");
  assert.deepEqual(log, ["ipi 1,3", "ipi 0,1,2,3", "sfence.vma 0,1", "fence.i 0"]);
});

test("HSM starts a stopped hart, refuses a running one, bad ids and addresses, and reports status", () => {
  const { call, log, states } = fakes(2);
  assert.equal(call(EID_HSM, 2n, 1n).value, BigInt(HartState.Stopped));
  assert.equal(call(EID_HSM, 0n, 1n, RAM + 0x200n, 77n).error, SBI_SUCCESS);
  assert.deepEqual(log, ["start 1 80000200 77"]);
  assert.equal(call(EID_HSM, 2n, 1n).value, BigInt(HartState.StartPending));
  states[1] = HartState.Started;
  assert.equal(call(EID_HSM, 0n, 1n, RAM, 0n).error, SBI_ERR_ALREADY_AVAILABLE);
  assert.equal(call(EID_HSM, 0n, 7n, RAM, 0n).error, SBI_ERR_INVALID_PARAM);
  states[1] = HartState.Stopped;
  assert.equal(call(EID_HSM, 0n, 1n, 0x1000n, 0n).error, SBI_ERR_INVALID_ADDRESS, "not RAM");
  assert.equal(call(EID_HSM, 2n, 9n).error, SBI_ERR_INVALID_PARAM);
  assert.deepEqual(call(EID_HSM, 1n).outcome, { kind: "hart-stopped" });
  assert.deepEqual(call(EID_HSM, 3n, 0n, 0n, 0n).outcome, { kind: "hart-suspended" });
  assert.equal(call(EID_HSM, 3n, 0x8000_0000n, RAM, 0n).error, SBI_ERR_NOT_SUPPORTED);
  assert.equal(call(EID_HSM, 3n, 5n, 0n, 0n).error, SBI_ERR_INVALID_PARAM, "reserved suspend type");
});

test("SRST asks the machine to shut down or reboot, and rejects reserved values", () => {
  const { call } = fakes();
  assert.deepEqual(call(EID_SRST, 0n, 0n, 0n).outcome, { kind: "reset", type: "shutdown", systemFailure: false });
  assert.deepEqual(call(EID_SRST, 0n, 1n, 1n).outcome, { kind: "reset", type: "cold-reboot", systemFailure: true });
  assert.equal(call(EID_SRST, 0n, 3n, 0n).error, SBI_ERR_INVALID_PARAM);
  assert.equal(call(EID_SRST, 0n, 0n, 2n).error, SBI_ERR_INVALID_PARAM);
});

test("DBCN writes guest memory to the console and reads input into guest memory, bounds-checked", () => {
  const { call, log, memory } = fakes();
  memory.set(new TextEncoder().encode("hi there"), 0x10);
  const w = call(EID_DBCN, 0n, 8n, RAM + 0x10n, 0n);
  assert.deepEqual([w.error, w.value], [SBI_SUCCESS, 8n]);
  assert.equal(call(EID_DBCN, 2n, 0x21n).error, SBI_SUCCESS);
  const r = call(EID_DBCN, 1n, 3n, RAM + 0x100n, 0n);
  assert.deepEqual([r.error, r.value], [SBI_SUCCESS, 3n]);
  assert.equal(new TextDecoder().decode(memory.slice(0x100, 0x103)), "typ");
  assert.deepEqual(log, ["console hi there", "console !"]);
  assert.equal(call(EID_DBCN, 0n, 16n, RAM + 0xff8n, 0n).error, SBI_ERR_INVALID_PARAM, "runs off the end of RAM");
  assert.equal(call(EID_DBCN, 0n, 4n, 0x10n, 0n).error, SBI_ERR_INVALID_PARAM, "not RAM");
  assert.equal(call(EID_DBCN, 0n, 4n, RAM, 1n).error, SBI_ERR_INVALID_PARAM, "base_addr_hi set");
});

test("calls are counted per extension", () => {
  const stats = new SbiStats();
  const regs = new Array<bigint>(32).fill(0n);
  regs[17] = EID_BASE;
  const caller: SbiCaller = { hartId: 0, getX: (i) => regs[i], setX: (i, v) => { regs[i] = v; } };
  handleSbiCall(caller, {} as SbiPlatform, stats);
  regs[17] = 0x999n;
  handleSbiCall(caller, {} as SbiPlatform, stats);
  assert.deepEqual([...stats.calls], [["base", 1], ["unsupported", 1]]);
});
