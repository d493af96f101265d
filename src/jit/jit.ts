// The translation cache of one VM: the host half of binary translation.
//
// The core counts block entries and queues hot ones (src/core/jit-cache.ts);
// when a batch is full it calls compile() here, which translates each queued
// entry into a region function (translate.ts), compiles them all as one
// WebAssembly module (so module compile cost is shared by the batch),
// installs the functions in the core's function table and records them in
// the cache entries. Pages with translations get their CODE bit in the page
// map and leave every hart's store TLB, so a store to them takes the slow path
// and invalidates (see jit-cache.ts).
//
// Memory bound: at most `maxRegions` functions and `maxCodeBytes` of generated
// WebAssembly live at once; a batch that would pass either first drops the
// whole cache (QEMU flushes its translation buffer the same way when full),
// so a long-running guest cannot grow host memory without limit.

import type { Core } from "../vcpu/core.js";
import type { FramePool } from "../memory/frame-pool.js";
import { FRAME_SIZE, WASM_MAX_PAGES } from "../memory/frame-pool.js";
import type { P2m } from "../memory/p2m.js";
import { encodeModule, type Func } from "./wasm-emitter.js";
import { CodePageMap } from "./code-page-map.js";
import { translateRegion, HELPERS, SUPPORT_FUNCS, type CoreLayout } from "./translate.js";

export interface JitOptions {
  /** Entries into a block start before it is translated (1: translate before
   *  the first execution, as the tests' "forced" mode does). */
  threshold?: number;
  /** Queued entries that make a compile batch (1 with threshold 1). */
  batch?: number;
  maxRegions?: number;
  maxCodeBytes?: number;
}

/** A pCPU worker's cache for a VM that other workers may run too. */
export interface JitSharing {
  /** Host address of the VM's CodePageMap. */
  pageMap: number;
  /** Every hart block of the VM. */
  harts: number[];
  /** The frame owner the cache's area is charged to. */
  owner?: number;
}

export const DEFAULT_THRESHOLD = 2000;
const DEFAULT_BATCH = 16;
const DEFAULT_MAX_REGIONS = 16384;
const DEFAULT_MAX_CODE_BYTES = 64 << 20;
const BUCKETS = 8192;
/** A page rewritten this often after being translated is left to the
 *  interpreter (code and data sharing a page, or a guest generating code in a loop). */
const THRASH_LIMIT = 64;

interface Install {
  ent: number;
  key: bigint;
  gen: number;
  starts: number[];
  entryBlock: number;
}

export interface JitStats {
  /** Region functions compiled, and the basic blocks and instructions in them. */
  regions: number;
  blocks: number;
  instructions: number;
  /** Compile batches (modules) and the host time spent translating and compiling
   *  them (the guest waits meanwhile). */
  batches: number;
  compileMs: number;
  /** Of compileMs, the part before V8 gets the module: decoding guest code and
   *  emitting WebAssembly (what a translation cache kept between runs could
   *  save; V8's compile it could not, Node having no way to keep compiled code). */
  translateMs: number;
  codeBytes: number;
  /** Entries into translated code (cache hits of the dispatcher), and the
   *  instructions retired there. */
  entered: number;
  /** Regions entered straight from the previous one (cross-page jumps, calls,
   *  returns and other indirect jumps whose target was translated). */
  chained: number;
  translatedInstructions: number;
  /** Instructions translated code handed back to the interpreter (faults,
   *  MMIO exits, SYSTEM instructions, budget ends). */
  exitsToInterpreter: number;
  /** Pages whose translations a write (guest store, DMA, p2m change) retired. */
  invalidations: number;
  /** Whole-cache flushes at the size bound. */
  flushes: number;
}

export class Jit {
  readonly threshold: number;
  private readonly batch: number;
  private readonly maxRegions: number;
  private readonly maxCodeBytes: number;
  private readonly area: number;
  private readonly areaFrames: number;
  private readonly pageMap: CodePageMap;
  /** Harts whose store TLBs must drop pages that get translations: all the VM's. */
  private readonly harts: number[] = [];
  /** Whether the page map is this cache's alone (inline) or the VM's, shared with
   *  other pCPU workers' caches. */
  private readonly sharedMap: boolean;
  private readonly layout: CoreLayout;
  private readonly helpers: Record<string, unknown>;
  private readonly k: Record<string, number>;
  /** Table slots handed out since the last flush (slot 0 means "none"). */
  private readonly slots: number[] = [];
  private readonly tableSlots: TableSlots;
  private liveCodeBytes = 0;
  private readonly s: Omit<JitStats, "entered" | "chained" | "translatedInstructions" | "exitsToInterpreter" | "invalidations"> = {
    regions: 0, blocks: 0, instructions: 0, batches: 0, compileMs: 0, translateMs: 0, codeBytes: 0, flushes: 0,
  };

  /** `shared`: the cache is one pCPU worker's for a VM whose harts may run on
   *  other workers too: the VM's page map, all its harts, its frame owner. */
  constructor(private readonly core: Core, private readonly pool: FramePool, private readonly p2m: P2m, opts: JitOptions = {},
    shared?: JitSharing) {
    this.threshold = Math.max(1, opts.threshold ?? DEFAULT_THRESHOLD);
    this.batch = Math.max(1, opts.batch ?? (this.threshold === 1 ? 1 : DEFAULT_BATCH));
    // The core packs a table slot into 16 bits (jit-cache.ts target()).
    this.maxRegions = Math.min(opts.maxRegions ?? DEFAULT_MAX_REGIONS, 0xffff);
    this.maxCodeBytes = opts.maxCodeBytes ?? DEFAULT_MAX_CODE_BYTES;
    const k = core.k as unknown as Record<string, number>;
    this.k = k;
    this.tableSlots = tableSlotsOf(core);
    this.layout = {
      PC_OFF: k.PC_OFF, F_OFF: k.F_OFF, FFLAGS_OFF: k.FFLAGS_OFF, FRM_OFF: k.FRM_OFF, MSTATUS_OFF: k.MSTATUS_OFF,
      CTX_LOAD_OFF: k.CTX_LOAD_OFF, CTX_STORE_OFF: k.CTX_STORE_OFF, JIT_BAIL_OFF: k.JIT_BAIL_OFF,
      TLB_LOAD_OFF: k.TLB_LOAD_OFF, TLB_STORE_OFF: k.TLB_STORE_OFF, TLB_ENTRIES: k.TLB_ENTRIES,
      JIT_NEED_INTERP: k.JIT_NEED_INTERP, JIT_STOPPED: k.JIT_STOPPED, REQ_OFF: k.REQ_OFF,
    };
    const fn = core.fn as unknown as Record<string, unknown>;
    this.helpers = Object.fromEntries(HELPERS.map((h) => [h.name, fn[h.name]]));

    this.areaFrames = Math.ceil((k.AREA_TABLE + BUCKETS * k.BUCKET_WAYS * k.ENTRY_SIZE) / FRAME_SIZE);
    this.area = pool.allocContiguous(this.areaFrames, shared?.owner);
    this.sharedMap = shared !== undefined;
    this.pageMap = shared ? CodePageMap.attach(pool, p2m, shared.pageMap) : CodePageMap.create(pool, p2m);
    if (shared) this.harts.push(...shared.harts);
    const v = pool.view;
    const set = (off: number, val: number | bigint) => v.setBigUint64(this.area + off, BigInt(val), true);
    set(k.AREA_BUCKET_MASK, BUCKETS - 1);
    set(k.AREA_THRESHOLD, this.threshold);
    set(k.AREA_BATCH, Math.min(this.batch, k.AREA_QUEUE_CAP));
    set(k.AREA_PAGEMAP, this.pageMap.address);
    set(k.AREA_PAGEMAP_BASE, p2m.baseGfn);
    set(k.AREA_PAGEMAP_COUNT, p2m.count);
    core.setCompiler(() => this.compile());
  }

  /** Run hart `h` on this cache (a pCPU worker, before each turn of a vCPU:
   *  the core instance compiles into whichever cache its hart uses). */
  use(h: number): void {
    this.core.fn.setJitCache(h, this.area);
    this.core.setCompiler(() => this.compile());
  }

  /** Let hart block `h` use this cache. */
  attachHart(h: number): void {
    this.harts.push(h);
    this.core.fn.setJitCache(h, this.area);
  }

  stats(): JitStats {
    const v = this.pool.view;
    const get = (off: number) => Number(v.getBigUint64(this.area + off, true));
    return {
      ...this.s,
      entered: get(this.k.AREA_STAT_ENTERED),
      chained: get(this.k.AREA_STAT_CHAINED),
      translatedInstructions: get(this.k.AREA_STAT_INSNS),
      exitsToInterpreter: get(this.k.AREA_STAT_BAILS),
      invalidations: get(this.k.AREA_STAT_INVALIDATIONS) + this.pageMap.invalidations,
    };
  }

  /** Guest frames [index, index + count) of the p2m window changed (DMA wrote
   *  them, or their mapping changed): their translations must not run again. */
  invalidatePages(index: number, count: number): void {
    this.pageMap.invalidate(index, count);
  }

  /** Translate the queued entries (the core calls this through its `jit.compile` import). */
  compile(): void {
    const k = this.k;
    const v = this.pool.view;
    const n = Number(v.getBigUint64(this.area + k.AREA_QUEUE_LEN, true));
    if (n === 0) return;
    if (this.slots.length + n > this.maxRegions || this.liveCodeBytes > this.maxCodeBytes) this.flush();
    const started = performance.now();
    const queued: number[] = [];
    for (let i = 0; i < n; i++) queued.push(Number(v.getBigUint64(this.area + k.AREA_QUEUE + i * 8, true)));
    v.setBigUint64(this.area + k.AREA_QUEUE_LEN, 0n, true);

    const funcs: Func[] = [];
    const installs: Install[] = [];
    const marked = new Set<number>();
    const expandC = (c: number) => this.core.fn.expandC(c);
    for (const ent of queued) {
      const key = v.getBigUint64(ent, true);
      const gpa = key & ((1n << 56n) - 1n);
      const index = this.p2m.indexOf(gpa);
      const host = index < 0 ? undefined : this.p2m.frameAt(index);
      if (host === undefined) { this.setEntry(ent, 0, 0, 0); continue; } // unmapped since: count again
      const word = this.pageMap.word(index);
      const gen = word >>> 8;
      if (((word >>> 1) & 127) >= THRASH_LIMIT) { this.setEntry(ent, 0, k.HITS_NEVER, gen); continue; }
      const region = translateRegion(this.pool.bytes.subarray(host, host + FRAME_SIZE), Number(gpa & 0xfffn), expandC, this.layout, `f${funcs.length}`);
      if (!region) { this.setEntry(ent, 0, k.HITS_NEVER, gen); continue; }
      // From now on a store to the page must retire this translation, even
      // before it is installed: CODE on, and out of every store TLB.
      if ((word & k.PAGE_CODE) === 0) {
        // A generation bump another thread makes meanwhile stays (and makes
        // this translation old before it is ever entered).
        this.pageMap.markCode(index);
        marked.add(host);
      }
      funcs.push(region.func);
      installs.push({ ent, key, gen, starts: region.starts, entryBlock: region.entryBlock });
      this.s.regions++;
      this.s.blocks += region.starts.length;
      this.s.instructions += region.insns;
    }
    for (const host of marked) for (const h of this.harts) this.core.fn.jitDropStores(h, host);
    if (funcs.length === 0) {
      this.s.compileMs += performance.now() - started;
      this.s.translateMs += performance.now() - started;
      return;
    }
    const bytes = encodeModule(HELPERS.map((h) => ({ module: "core", name: h.name, type: h.type })), [...SUPPORT_FUNCS, ...funcs], WASM_MAX_PAGES);
    this.s.translateMs += performance.now() - started;
    this.s.batches++;
    this.s.codeBytes += bytes.length;
    this.liveCodeBytes += bytes.length;
    // Synchronous compile: V8 compiles the batch with its baseline compiler
    // (Liftoff) now and optimizes hot functions in the background later.
    // Compiling the batch asynchronously was tried: on two cores the result
    // came back ~60 ms later (the optimizer's jobs compete), and the guest
    // ran slower interpreting meanwhile than it does waiting here.
    this.install(new WebAssembly.Module(bytes), installs);
    this.s.compileMs += performance.now() - started;
  }

  /** Put a compiled batch in the table and point its cache entries at it. An
   *  entry whose page was written since translation keeps counting instead. */
  private install(mod: WebAssembly.Module, installs: Install[]): void {
    const v = this.pool.view;
    const inst = new WebAssembly.Instance(mod, { env: { memory: this.pool.memory }, core: this.helpers as WebAssembly.ModuleImports });
    const table = this.core.table;
    installs.forEach((it, i) => {
      if (v.getBigUint64(it.ent, true) !== it.key || v.getUint32(it.ent + this.k.ENTRY_HITS, true) !== this.k.HITS_QUEUED >>> 0) return;
      const slot = this.tableSlots.alloc(table);
      // The table is full of other VMs' code (this worker's caches share
      // it): count the entry again, later.
      if (slot === undefined) return this.setEntry(it.ent, 0, 0, it.gen);
      this.slots.push(slot);
      table.set(slot, inst.exports[`f${i}`] as Function);
      this.setEntry(it.ent, slot, 0, it.gen, it.entryBlock);
      // The region's other blocks become entries too (same page, same mode).
      const page = it.key & ~0xfffn;
      it.starts.forEach((off, block) => {
        if (block !== it.entryBlock && off >= 0) this.core.fn.jitLink(page | BigInt(off), slot, block, it.gen);
      });
    });
  }

  private setEntry(ent: number, fn: number, hits: number, gen: number, block = 0): void {
    const v = this.pool.view;
    v.setUint32(ent + this.k.ENTRY_FN, fn, true);
    v.setUint32(ent + this.k.ENTRY_HITS, hits >>> 0, true);
    v.setUint32(ent + this.k.ENTRY_GEN, gen >>> 0, true);
    v.setUint32(ent + this.k.ENTRY_BLOCK, block, true);
  }

  /** Drop every translation. Queued entries stay (the queue names them). */
  private flush(): void {
    const k = this.k;
    const v = this.pool.view;
    const first = this.area + k.AREA_TABLE;
    const entries = BUCKETS * k.BUCKET_WAYS;
    for (let i = 0; i < entries; i++) {
      const ent = first + i * k.ENTRY_SIZE;
      if (v.getUint32(ent + k.ENTRY_HITS, true) === k.HITS_QUEUED >>> 0) continue;
      v.setBigUint64(ent, 0n, true);
      this.setEntry(ent, 0, 0, 0);
    }
    if (!this.sharedMap) this.pageMap.clearCode();
    const table = this.core.table;
    for (const slot of this.slots) {
      table.set(slot, null);
      this.tableSlots.free(slot);
    }
    this.slots.length = 0;
    this.liveCodeBytes = 0;
    this.s.flushes++;
  }

  /** Give the cache's frames back (the VM is going away). */
  release(): void {
    for (const slot of this.slots) {
      this.core.table.set(slot, null);
      this.tableSlots.free(slot);
    }
    this.slots.length = 0;
    for (const h of this.harts) this.core.fn.setJitCache(h, 0);
    this.core.setCompiler(undefined);
    this.pool.freeContiguous(this.area, this.areaFrames);
    this.pageMap.release();
  }
}

/**
 * The slots of one core instance's function table. Every translation cache
 * on that instance (a pCPU worker has one per VM it ran) installs its code
 * in the same table, so slots are handed out here, not per cache: two
 * caches counting their own slots from 1 overwrote each other's code (a
 * second VM on a worker ran the first one's). The core packs a slot into
 * 16 bits (jit-cache.ts target()); slot 0 means "none".
 */
class TableSlots {
  private readonly freed: number[] = [];
  private next = 1;

  alloc(table: WebAssembly.Table): number | undefined {
    const slot = this.freed.pop() ?? (this.next <= 0xffff ? this.next++ : undefined);
    if (slot !== undefined && slot >= table.length) table.grow(Math.max(1024, slot + 1 - table.length));
    return slot;
  }

  free(slot: number): void {
    this.freed.push(slot);
  }
}

const tableSlots = new WeakMap<Core, TableSlots>();
function tableSlotsOf(core: Core): TableSlots {
  let s = tableSlots.get(core);
  if (!s) tableSlots.set(core, (s = new TableSlots()));
  return s;
}

/** The `--stats` lines for the translation cache. */
export function formatJitStats(s: JitStats): string {
  return [
    "binary translation:",
    `  translated     ${s.regions} regions, ${s.blocks} blocks, ${s.instructions} instructions (${s.batches} batches, ${(s.codeBytes / 1024).toFixed(0)} KiB of wasm)`,
    `  compile time   ${s.compileMs.toFixed(0)} ms (translating ${s.translateMs.toFixed(0)} ms, V8 ${(s.compileMs - s.translateMs).toFixed(0)} ms)`,
    `  cache hits     ${s.entered} entries from the dispatcher, ${s.chained} region to region; ${s.translatedInstructions} instructions retired there`,
    `  interpreter    ${s.exitsToInterpreter} instructions handed back (faults, MMIO, SYSTEM, slice ends)`,
    `  invalidations  ${s.invalidations} pages rewritten after translation, ${s.flushes} cache flushes`,
  ].join("\n");
}

/** Parse `--jit=on|off` and `--jit-threshold=N` (undefined flags: on, default threshold). */
export function parseJitFlags(jit: string | undefined, threshold: string | undefined): JitOptions | false {
  if (jit !== undefined && jit !== "on" && jit !== "off") throw new JitFlagError(`--jit: expected on or off, got '${jit}'`);
  if (threshold !== undefined && (!/^\d+$/.test(threshold) || Number(threshold) < 1 || Number(threshold) > 1_000_000)) {
    throw new JitFlagError(`--jit-threshold: expected 1..1000000, got '${threshold}'`);
  }
  if (jit === "off") {
    if (threshold !== undefined) throw new JitFlagError("--jit-threshold needs the JIT on");
    return false;
  }
  return threshold !== undefined ? { threshold: Number(threshold) } : {};
}

export class JitFlagError extends Error {}
