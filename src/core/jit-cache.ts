// The translation cache as the core sees it (binary translation, src/jit/).
//
// Translated code is keyed by the guest-physical address of its entry and the
// fetch mode (privilege, translation on/off), so code mapped at two virtual
// addresses shares one translation. The host side (src/jit/jit.ts) owns the
// cache: it allocates this area in the shared memory, compiles hot entries into
// WebAssembly functions in batches and installs them in the core's function
// table. The core only counts, looks up and invalidates:
//
//   - counting: every block start the dispatcher reaches gets an entry; when its
//     hit count reaches the threshold its key goes on the compile queue, and a
//     full queue calls the host (import `jit.compile`) to translate the batch;
//   - lookup: fetch TLB (which already proved execute permission for the page
//     in this mode) -> guest-physical address -> 4-way bucket -> function;
//   - invalidation: one u32 per guest frame holds a CODE bit and a generation.
//     Frames with translations are kept out of the store TLB, so every store to
//     one takes the slow path, which bumps the generation; a translation whose
//     generation is old is never entered again. Device DMA and p2m changes do
//     the same from the host side.
//
// Area layout (byte offsets from the area's base; the host writes the header).

import { H, rd, JIT_CACHE_OFF, TLB_FETCH_OFF, TLB_FETCH_GPA_OFF, status, clearStatus, STATUS_OK } from "./hart";
import { fetchSlow } from "./memory";
import { ctxFetch, tlbIndex } from "./tlb";

export const AREA_BUCKET_MASK: u32 = 0; //  number of buckets - 1 (a power of two)
export const AREA_THRESHOLD: u32 = 8; //    hits before an entry is queued for translation
export const AREA_BATCH: u32 = 16; //       queue length that makes the core ask for a compile
export const AREA_QUEUE_LEN: u32 = 24;
export const AREA_PAGEMAP: u32 = 32; //     host address of the u32 per guest frame
export const AREA_PAGEMAP_BASE: u32 = 40; // first guest frame number it covers
export const AREA_PAGEMAP_COUNT: u32 = 48;
// Counters (the host reads them for --stats).
export const AREA_STAT_ENTERED: u32 = 64; // entries into translated code
export const AREA_STAT_BAILS: u32 = 72; //   instructions handed back to the interpreter
export const AREA_STAT_INVALIDATIONS: u32 = 80; // pages whose translations a write killed
export const AREA_STAT_INSNS: u32 = 88; //   instructions retired in translated code
export const AREA_STAT_CHAINED: u32 = 96; // regions entered straight from another region
export const AREA_QUEUE: u32 = 128; //      AREA_QUEUE_CAP u64 entry addresses (queued entries are never evicted)
export const AREA_QUEUE_CAP: u32 = 64;
export const AREA_TABLE: u32 = 1024; //     buckets of 4 entries
export const BUCKET_WAYS: u32 = 4;
export const ENTRY_SIZE: u32 = 32; //       key u64 | fn u32 | hits u32 | gen u32 | block u32 | unused
export const ENTRY_FN: u32 = 8;
export const ENTRY_HITS: u32 = 12;
export const ENTRY_GEN: u32 = 16;
// A region has one function for all its blocks: an entry names the function
// and which of its blocks to start at (0 for the block it was made for).
export const ENTRY_BLOCK: u32 = 20;

/** What jitFind and jitChainTarget return: the table slot (below 2^16, see
 *  jit.ts) and the block, as slot | block << 16; 0 for none. */
@inline function target(ent: usize, fn: u32): u32 {
  return fn | (load<u32>(ent, ENTRY_BLOCK) << 16);
}

/** hits values that are states, not counts. */
export const HITS_QUEUED: u32 = 0xffffffff;
/** The host found nothing it can translate at this entry (e.g. a CSR access). */
export const HITS_NEVER: u32 = 0xfffffffe;

export const KEY_VALID: u64 = 1 << 63;

// Page map entry: bit 0 CODE, bits 1..7 invalidations so far (saturating),
// bits 8..31 generation.
export const PAGE_CODE: u32 = 1;
const PAGE_INVAL_MAX: u32 = 127;

const PAGE_MASK: u64 = ~(<u64>0xfff);
/** The guest-physical address in a key. */
const GPA_MASK: u64 = ((<u64>1) << 56) - 1;

// ---- host-side interface -----------------------------------------------------

/** The host's compiler: translates the queued keys (and empties the queue). */
@external("jit", "compile")
declare function hostCompile(h: usize): void;

@inline function area(): usize {
  return <usize>rd(JIT_CACHE_OFF);
}

@inline function areaU64(a: usize, off: u32): u64 {
  return load<u64>(a + <usize>off);
}

// ---- invalidation ----------------------------------------------------------------

/** Address of the page-map word for `gpa`, or 0 when it is outside the map. */
function pageWord(a: usize, gpa: u64): usize {
  const idx = (gpa >> 12) - areaU64(a, AREA_PAGEMAP_BASE);
  if (idx >= areaU64(a, AREA_PAGEMAP_COUNT)) return 0;
  return <usize>areaU64(a, AREA_PAGEMAP) + ((<usize>idx) << 2);
}

/** A store is about to change guest-physical page `gpa`: if translations were
 *  made from it, retire them (new generation, CODE cleared) and return true.
 *  Called on every store slow path, so the CODE-free case is cheap. The word
 *  is shared with the other threads running harts of the VM (their caches
 *  share the page map) and with the host (jit.ts): the update is a
 *  compare-and-swap, so two invalidations are never one bump. */
export function storeHitsCode(gpa: u64): bool {
  const a = area();
  if (a == 0) return false;
  const p = pageWord(a, gpa);
  if (p == 0) return false;
  let w = atomic.load<u32>(p);
  while (true) {
    // CODE already cleared: another thread retired them first.
    if ((w & PAGE_CODE) == 0) return false;
    let n = (w >> 1) & PAGE_INVAL_MAX;
    if (n < PAGE_INVAL_MAX) n++;
    const seen = atomic.cmpxchg<u32>(p, w, (((w >> 8) + 1) << 8) | (n << 1));
    if (seen == w) break;
    w = seen;
  }
  store<u64>(a + <usize>AREA_STAT_INVALIDATIONS, areaU64(a, AREA_STAT_INVALIDATIONS) + 1);
  return true;
}

// ---- lookup and counting -------------------------------------------------------------

/** fetchGpa's miss (guest-physical addresses have at most 56 bits). */
const NO_GPA: u64 = 0xffffffffffffffff;

/** The guest-physical address of `pc` if the fetch TLB holds its page for the
 *  current fetch mode (which proves execute permission), else NO_GPA. */
@inline function fetchGpa(pc: u64): u64 {
  const ti = tlbIndex(pc);
  if (load<u64>(H + <usize>TLB_FETCH_OFF + ti) != ((pc & PAGE_MASK) | ctxFetch)) return NO_GPA;
  return load<u64>(H + <usize>TLB_FETCH_GPA_OFF + (ti >> 1)) | (pc & 0xfff);
}

/** Translation key of the instruction at guest-physical `gpa` in the current
 *  fetch mode: privilege (2 bits) and whether fetches are translated (1 bit). */
@inline function keyOf(gpa: u64): u64 {
  const mode = (ctxFetch & 3) | ((ctxFetch >> 2) & 4);
  return KEY_VALID | (mode << 56) | gpa;
}

@inline function bucketOf(a: usize, key: u64): usize {
  const h = <u32>((key >> 1) ^ (key >> 13) ^ (key >> 56) * 0x9e37);
  return a + <usize>AREA_TABLE + ((<usize>(h & <u32>areaU64(a, AREA_BUCKET_MASK))) * <usize>(BUCKET_WAYS * ENTRY_SIZE));
}

/** An entry is decided (translated, or known untranslatable) as of its page's
 *  generation; a newer generation means its code was overwritten since. */
@inline function entryCurrent(a: usize, ent: usize, gpa: u64): bool {
  const p = pageWord(a, gpa);
  return p != 0 && (load<u32>(p) >> 8) == load<u32>(ent, ENTRY_GEN);
}

function enqueue(a: usize, ent: usize): void {
  const n = <u32>areaU64(a, AREA_QUEUE_LEN);
  store<u64>(a + <usize>AREA_QUEUE + ((<usize>n) << 3), <u64>ent);
  store<u64>(a + <usize>AREA_QUEUE_LEN, <u64>(n + 1));
}

/** Ask the host to translate what is queued (also called at the end of run()). */
export function flushCompileQueue(): void {
  const a = area();
  if (a != 0 && areaU64(a, AREA_QUEUE_LEN) != 0) hostCompile(H);
}

/** One more hit on `ent`; queue it at the threshold and compile a full batch. */
function countHit(a: usize, ent: usize, hits: u32): void {
  hits++;
  if (hits < <u32>areaU64(a, AREA_THRESHOLD)) {
    store<u32>(ent, hits, ENTRY_HITS);
    return;
  }
  const queued = <u32>areaU64(a, AREA_QUEUE_LEN);
  if (queued >= AREA_QUEUE_CAP) {
    // The host is still busy with earlier batches: try again on a later hit.
    store<u32>(ent, hits - 1, ENTRY_HITS);
    return;
  }
  store<u32>(ent, HITS_QUEUED, ENTRY_HITS);
  enqueue(a, ent);
  const len = areaU64(a, AREA_QUEUE_LEN);
  if (len >= areaU64(a, AREA_BATCH) || len >= <u64>AREA_QUEUE_CAP) hostCompile(H);
}

/** The way of `bucket` that holds `key`, or 0. */
@inline function wayOf(bucket: usize, key: u64): usize {
  for (let w: u32 = 0; w < BUCKET_WAYS; w++) {
    const ent = bucket + <usize>(w * ENTRY_SIZE);
    if (load<u64>(ent) == key) return ent;
  }
  return 0;
}

/** The way of `bucket` to give to a new key (see evictRank), or 0 when every
 *  way must stay. */
function victimWay(bucket: usize): usize {
  let victim: usize = 0;
  let best: u32 = HITS_NEVER;
  for (let w: u32 = 0; w < BUCKET_WAYS; w++) {
    const ent = bucket + <usize>(w * ENTRY_SIZE);
    const rank = evictRank(ent);
    if (rank < best) { victim = ent; best = rank; }
  }
  return victim;
}

/** How readily a way may be given to another key: 0 when empty, else the
 *  hits of a counting entry; HITS_NEVER or more for ways that stay until the
 *  host flushes the cache: translated ones (it owns the functions they name),
 *  untranslatable ones, and queued ones (the queue names them). */
@inline function evictRank(ent: usize): u32 {
  if (load<u64>(ent) == 0) return 0;
  return load<u32>(ent, ENTRY_FN) == 0 ? load<u32>(ent, ENTRY_HITS) : HITS_NEVER;
}

/**
 * The translated function for the block starting at `pc`, as a table index, or 0
 * (interpret). Counts the hit when there is none yet. Requires the JIT on.
 */
export function jitFind(pc: u64): u32 {
  const a = area();
  let gpa = fetchGpa(pc);
  if (gpa == NO_GPA) {
    // Fill the fetch TLB as the interpreter's fetch would; if the fetch
    // faults, the interpreter repeats it and takes the fault.
    fetchSlow(pc);
    if (status != STATUS_OK) {
      clearStatus();
      return 0;
    }
    gpa = fetchGpa(pc);
    if (gpa == NO_GPA) return 0;
  }
  const key = keyOf(gpa);
  const bucket = bucketOf(a, key);
  const ent = wayOf(bucket, key);
  if (ent != 0) {
    const fn = load<u32>(ent, ENTRY_FN);
    const hits = load<u32>(ent, ENTRY_HITS);
    if (fn != 0 || hits == HITS_NEVER) {
      if (entryCurrent(a, ent, gpa)) return fn != 0 ? target(ent, fn) : 0;
      store<u32>(ent, 0, ENTRY_FN); // its code was overwritten: count again
      store<u32>(ent, 0, ENTRY_HITS);
      countHit(a, ent, 0);
    } else if (hits != HITS_QUEUED) {
      countHit(a, ent, hits);
    }
    // A batch may just have been compiled, this entry with it.
    const now = load<u32>(ent, ENTRY_FN);
    return now != 0 && load<u64>(ent) == key && entryCurrent(a, ent, gpa) ? target(ent, now) : 0;
  }
  const victim = victimWay(bucket);
  if (victim == 0) return 0;
  store<u64>(victim, key);
  store<u32>(victim, 0, ENTRY_FN);
  store<u32>(victim, 0, ENTRY_HITS);
  store<u32>(victim, 0, ENTRY_GEN);
  store<u32>(victim, 0, ENTRY_BLOCK);
  countHit(a, victim, 0);
  const now = load<u32>(victim, ENTRY_FN);
  return now != 0 && load<u64>(victim) == key ? target(victim, now) : 0;
}

/**
 * The current translation for the region starting at `pc`, or 0: the fast
 * lookup that chains one region to the next (execute.ts runRegions). Only a
 * fetch TLB hit counts, as that proves `pc` is executable in this mode;
 * anything else (a miss, no translation yet, code overwritten since) is left
 * to the dispatcher's jitFind, which also counts and compiles.
 */
export function jitChainTarget(pc: u64): u32 {
  const a = area();
  const gpa = fetchGpa(pc);
  if (gpa == NO_GPA) return 0;
  const key = keyOf(gpa);
  const ent = wayOf(bucketOf(a, key), key);
  if (ent == 0) return 0;
  const fn = load<u32>(ent, ENTRY_FN);
  if (fn == 0 || !entryCurrent(a, ent, gpa)) return 0;
  store<u64>(a + <usize>AREA_STAT_CHAINED, areaU64(a, AREA_STAT_CHAINED) + 1);
  return target(ent, fn);
}

/**
 * The host translated a region whose block `block` starts at the code `key`
 * names: make that block an entry too, unless the key already has a
 * translation or is queued for one. Taking a way from a counting entry or
 * an empty one; with none free the block stays reachable only inside its
 * region. This is how code already translated as part of another region
 * runs translated from its first visit instead of after `threshold` visits
 * and a translation of its own.
 */
export function jitLink(key: u64, fn: u32, block: u32, gen: u32): void {
  const a = area();
  const bucket = bucketOf(a, key);
  let victim = wayOf(bucket, key);
  if (victim != 0) {
    const translated = load<u32>(victim, ENTRY_FN) != 0 && entryCurrent(a, victim, key & GPA_MASK);
    if (translated || load<u32>(victim, ENTRY_HITS) == HITS_QUEUED) return;
  } else {
    victim = victimWay(bucket);
    if (victim == 0) return;
  }
  store<u64>(victim, key);
  store<u32>(victim, fn, ENTRY_FN);
  store<u32>(victim, 0, ENTRY_HITS);
  store<u32>(victim, gen, ENTRY_GEN);
  store<u32>(victim, block, ENTRY_BLOCK);
}

export function countEntered(retired: u32): void {
  const a = area();
  store<u64>(a + <usize>AREA_STAT_ENTERED, areaU64(a, AREA_STAT_ENTERED) + 1);
  store<u64>(a + <usize>AREA_STAT_INSNS, areaU64(a, AREA_STAT_INSNS) + <u64>retired);
}

export function countBail(): void {
  const a = area();
  store<u64>(a + <usize>AREA_STAT_BAILS, areaU64(a, AREA_STAT_BAILS) + 1);
}
