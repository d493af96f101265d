// Loading core.wasm and the typed view of its exports (src/core/index.ts).
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { projectRoot } from "../project-root.js";

/** The core's exports. u64 values cross as BigInt (signed: use asU64). */
export interface CoreExports {
  coreDataEnd(): number;
  hartStateSize(): number;
  hartReset(h: number, hartId: bigint, resetPc: bigint): void;
  run(h: number, budget: number): number;
  getX(h: number, i: number): bigint;
  setX(h: number, i: number, v: bigint): void;
  getF(h: number, i: number): bigint;
  setF(h: number, i: number, v: bigint): void;
  getPc(h: number): bigint;
  setPc(h: number, v: bigint): void;
  getPriv(h: number): number;
  setPriv(h: number, p: number): void;
  csrRead(h: number, csr: number): bigint;
  csrWrite(h: number, csr: number, v: bigint): void;
  csrSet(h: number, csr: number, bits: bigint): void;
  setP2m(h: number, table: number, baseGfn: bigint, count: bigint): void;
  tlbFlush(h: number): void;
  /** Callable from any thread: stores the level atomically and posts REQ_IRQ. */
  setIrqLine(h: number, line: number, level: number): void;
  /** The line's level as last set (0 or 1), read atomically (any thread). */
  getIrqLine(h: number, line: number): number;
  /** Atomically OR REQ_* bits into hart `h`'s request word (any thread). */
  postRequest(h: number, bits: number): void;
  getTime(h: number): bigint;
  /** With a time floor shared, never moves time backwards. */
  setTime(h: number, t: bigint): void;
  /** Share the VM's u64 time floor at host address `addr` (8-aligned; 0 = none).
   *  Returns 0 (nothing changed) when misaligned. */
  setTimeShared(h: number, addr: number): number;
  /** Log this hart's stores in the dirty bitmap at host address `addr` (one bit
   *  per p2m window page, u32 words; 0 = off); flush its TLB after. Returns 0
   *  (nothing changed) when `addr` is not 4-aligned. See memory/dirty-log.ts. */
  setDirtyLog(h: number, addr: number): number;
  getMtimecmp(h: number): bigint;
  setMtimecmp(h: number, v: bigint): void;
  setTickInsns(h: number, n: number): void;
  timerDeadline(h: number): bigint;
  wakeupPending(h: number): number;
  isWaiting(h: number): number;
  setSbiMode(h: number, on: number): void;
  setHtifTohost(h: number, gpa: bigint): void;
  // Binary translation (src/jit/).
  setJitCache(h: number, area: number): void;
  jitDropStores(h: number, hostPage: number): void;
  jitLink(key: bigint, fn: number, block: number, gen: number): void;
  expandC(c: number): number;
}

/** Exported constants (wasm globals) the hypervisor needs as numbers. */
export interface CoreConstants {
  RUN_REASON_OFF: number; RUN_ADDR_OFF: number; RUN_DATA_OFF: number; RUN_SIZE_OFF: number;
  RUN_WRITE_OFF: number; RUN_MMIO_DONE_OFF: number; RUN_INSNS_OFF: number;
  EXIT_BUDGET: number; EXIT_MMIO_READ: number; EXIT_MMIO_WRITE: number; EXIT_SBI: number; EXIT_WFI: number;
  EXIT_P2M_FAULT: number; EXIT_HTIF: number; EXIT_HALT: number;
  /** run() ended because REQ_EXIT was posted. */
  EXIT_KICK: number;
  /** Request word (u32 at hart + REQ_OFF) and its bits: re-check interrupts,
   *  set mip.SSIP, flush the TLB, end run() with EXIT_KICK. */
  REQ_OFF: number; REQ_IRQ: number; REQ_SSIP: number; REQ_TLB_FLUSH: number; REQ_EXIT: number;
  /** u32 at hart + IN_RUN_OFF: 1 while run() executes the hart (set by its caller: enterRun/leaveRun). */
  IN_RUN_OFF: number;
  /** Hart block field holding the host address of the shared time floor. */
  TIME_FLOOR_OFF: number;
  /** Hart block field holding the host address of the dirty log (0 = off). */
  DIRTY_LOG_OFF: number;
  MMIO_COMPLETED: bigint; MMIO_NO_DEVICE: bigint;
  P2M_PRESENT: number; P2M_WRITABLE: number; P2M_ACCESSED: number; P2M_SHARED: number;
  IRQ_LINE_MSIP: number; IRQ_LINE_SEIP: number; IRQ_LINE_MEIP: number;
  /** Hart block fields (u64, 0 or 1) holding the external lines' levels (setIrqLine), for threads without a core instance. */
  LINE_MEIP_OFF: number; LINE_SEIP_OFF: number;
  PC_OFF: number;
}

export interface Core {
  fn: CoreExports;
  k: CoreConstants;
  /** The shared memory it runs on (another thread's instance can share it). */
  memory: WebAssembly.Memory;
  /** The core's function table: translated code is installed here (src/jit/). */
  table: WebAssembly.Table;
  /** Who translates when the core's compile queue is full (none: the queue is dropped). */
  setCompiler(compile: (() => void) | undefined): void;
}

export const asU64 = (v: bigint): bigint => BigInt.asUintN(64, v);

/** Bytes at the start of the shared memory kept for the core's own data (its
 *  static segments); the frame pool hands out frames above. Checked at load. */
export const CORE_RESERVED_BYTES = 1 << 20;

let compiled: WebAssembly.Module | undefined;

export function coreWasmPath(): string {
  return join(projectRoot(), "build", "core.wasm");
}

/** The compiled core, for another thread to instantiate (a worker given it
 *  shares this compilation and V8's optimized code instead of making its own). */
export function coreModule(): WebAssembly.Module {
  if (!compiled) {
    let bytes: Buffer;
    try {
      bytes = readFileSync(coreWasmPath());
    } catch {
      throw new Error(`core.wasm not found at ${coreWasmPath()}: run \`npm run build\``);
    }
    checkCoreStamp(bytes, join(projectRoot(), "dist", "core.sha256"));
    compiled = new WebAssembly.Module(new Uint8Array(bytes));
  }
  return compiled;
}

/** build/core.wasm and dist/ come from different builds: the user's remedy
 *  is a build, so the CLI prints it as it is, not as an internal error. */
export class CoreBuildMismatch extends Error {
  override readonly name = "CoreBuildMismatch";
}

/** The core must be the one this code was compiled with (scripts/build.mjs
 *  stampCore, which writes its SHA-256 to `stampPath`): the code reads its
 *  exports by name. No stamp (a tree built before stamps existed) is not checked. */
export function checkCoreStamp(bytes: Uint8Array, stampPath: string): void {
  let stamp: string;
  try {
    stamp = readFileSync(stampPath, "utf8").trim();
  } catch {
    return;
  }
  // Required here, not imported: pCPU workers load this module too, and never
  // read the core from the file (they are given the compiled module).
  const { createHash } = createRequire(import.meta.url)("node:crypto") as typeof import("node:crypto");
  if (createHash("sha256").update(bytes).digest("hex") !== stamp) {
    throw new CoreBuildMismatch(`${coreWasmPath()} is not the core dist/ was compiled with (a build stopped part way?): run \`npm run build\``);
  }
}

/** One core instance on `memory` (all harts of a thread share an instance);
 *  `module`: the compiled core another thread passed on (coreModule()). */
export function instantiateCore(memory: WebAssembly.Memory, module?: WebAssembly.Module): Core {
  if (module) compiled ??= module;
  const mod = coreModule();
  const table = new WebAssembly.Table({ element: "anyfunc", initial: 1 });
  let compiler: (() => void) | undefined;
  const inst = new WebAssembly.Instance(mod, {
    env: {
      memory,
      table,
      abort: () => {
        throw new Error("internal error: the CPU core aborted");
      },
    },
    jit: {
      compile: () => {
        if (compiler) compiler();
      },
    },
  });
  const ex = inst.exports as Record<string, unknown>;
  const dataEnd = (ex.coreDataEnd as () => number)();
  if (dataEnd > CORE_RESERVED_BYTES) throw new Error(`internal error: core data (${dataEnd} bytes) exceeds its reserved area`);
  const k: Record<string, number | bigint> = {};
  for (const [name, v] of Object.entries(ex)) {
    if (v instanceof WebAssembly.Global) k[name] = v.value as number | bigint;
  }
  return {
    fn: ex as unknown as CoreExports,
    k: k as unknown as CoreConstants,
    memory,
    table,
    setCompiler: (c) => {
      compiler = c;
    },
  };
}

/**
 * run() hart `h` with its IN_RUN flag up meanwhile (hart.ts IN_RUN_OFF: a
 * thread breaking a page's sharing waits for the flush of harts inside run()
 * only). `words` is an Int32Array over the core's memory (FramePool.words).
 */
export function runMarked(core: Core, words: Int32Array, h: number, budget: number): number {
  const flag = (h + core.k.IN_RUN_OFF) >>> 2;
  Atomics.store(words, flag, 1);
  try {
    return core.fn.run(h, budget);
  } finally {
    Atomics.store(words, flag, 0);
  }
}
