// The compressed store: where the memory manager keeps guest pages it
// reclaimed and compressed (page-codec.ts), in a bounded pool of host memory.
//
// It is zsmalloc's design (Linux mm/zsmalloc.c) cut down: the capacity is one
// SharedArrayBuffer split into 4 KiB "zpages"; a zpage in use belongs to one
// size class and holds a fixed number of objects of that class's size, each
// object one compressed page; a zpage whose objects are all free goes back to
// the free zpages, to serve any class. Unlike zsmalloc, an object never spans
// two zpages, so a class is named by how many objects fit in a zpage (2 to
// 32): its size is floor(4096 / count). These are the densest classes for
// that layout; any size in between would hold no more objects per zpage than
// the next larger class, so it would only waste metadata. The worst case is
// an object just over a class's size (1366 bytes in a 2048-byte place: a third
// wasted); on average it is about half a step between neighbouring classes.
// Counting the bytes of full zpages that objects fill, these 20 classes fill
// 86% for lengths spread evenly over 1..2048 and 92% over 20..600, against 81%
// and 68% for 256-byte steps (and 83% and 80% for 128-byte steps).
//
// A slot (what put() returns, what the p2m keeps for a compressed page) is
// zpage * 32 + object index: it must fit in the 27 bits a p2m entry leaves
// for it, so a store has at most 2^22 zpages (16 GiB).
//
// Every thread that attaches the store (handle() -> postMessage ->
// CompressedStore.attach()) shares the metadata and the data. One SharedMutex
// guards both, and bytes are copied in and out while holding it: an object is
// at most 2 KiB (one short memcpy), and it means a free() racing a read()
// of the same slot gives the reader the whole object or a PageStoreError, never
// another page's bytes. Metadata costs 84 bytes per zpage (2%).

import { SharedMutex } from "../shared-mutex.js";
import { PageStoreError } from "./errors.js";
import { MAX_COMPRESSED, PAGE_SIZE } from "./page-codec.js";

const ZPAGE_SIZE = PAGE_SIZE;
const INDEX_BITS = 5;
const MAX_OBJECTS = 1 << INDEX_BITS;
/** Slots fit in this many bits of a p2m entry. */
export const SLOT_BITS = 27;
const MAX_ZPAGES = 1 << (SLOT_BITS - INDEX_BITS);
/** Largest capacity a store may have (16 GiB). */
export const MAX_STORE_BYTES = MAX_ZPAGES * ZPAGE_SIZE;

/** Objects per zpage of each class, densest last; the class's size is ZPAGE_SIZE / count. */
const COUNTS = [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 20, 24, 28, 32];
const SIZES = COUNTS.map((n) => Math.floor(ZPAGE_SIZE / n));
const FULL = COUNTS.map((n) => (n === 32 ? -1 : (1 << n) - 1));
/** Class of an object of each length 1..MAX_COMPRESSED: the smallest size that holds it. */
const CLASS_OF = new Uint8Array(MAX_COMPRESSED + 1);
for (let len = 1, c = COUNTS.length - 1; len <= MAX_COMPRESSED; len++) {
  while (SIZES[c] < len) c--;
  CLASS_OF[len] = c;
}

// Metadata, in 32-bit words: the header, then per-zpage arrays (CLS: class + 1,
// 0 when the zpage is free; USED: bitmap of objects in use; NEXT/PREV: links
// of its class's list of zpages with room, zpage + 1, 0 = none; the free zpage
// stack), then the length of every object (16 bits, 0 = free) and the stored
// bytes as a float64 (it passes 2^31). Zpages at or above TOP were never used.
const LOCK = 0;
const ZPAGES = 1;
const TOP = 2;
const FREE_DEPTH = 3;
const USED_ZPAGES = 4;
const OBJECTS = 5;
const HEADS = 8; // one per class: first zpage with room + 1
const HEADER_WORDS = HEADS + COUNTS.length;
const PER_ZPAGE_ARRAYS = 5;

/** Plain data naming a store, to post to another thread for attach(). */
export interface CompressedStoreHandle {
  readonly meta: SharedArrayBuffer;
  readonly data: SharedArrayBuffer;
}

export interface CompressedStoreStats {
  capacityBytes: number;
  /** Zpages in use × 4096: the host memory the objects take, waste included. */
  usedBytes: number;
  /** Sum of the objects' lengths. */
  storedBytes: number;
  objects: number;
}

export class CompressedStore {
  private readonly meta: SharedArrayBuffer;
  private readonly bytes: Uint8Array;
  private readonly header: Int32Array;
  private readonly lock: SharedMutex;
  private readonly cls: Int32Array;
  private readonly used: Int32Array;
  private readonly next: Int32Array;
  private readonly prev: Int32Array;
  private readonly freeStack: Int32Array;
  private readonly lengths: Uint16Array;
  private readonly stored: Float64Array;
  private readonly zpages: number;

  /** A store of `capacityBytes` (rounded down to 4 KiB zpages), all free. */
  static create(capacityBytes: number): CompressedStore {
    const zpages = Math.floor(capacityBytes / ZPAGE_SIZE);
    if (!(zpages >= 1 && zpages <= MAX_ZPAGES)) throw new RangeError(`compressed store capacity ${capacityBytes} is not between ${ZPAGE_SIZE} and ${MAX_STORE_BYTES} bytes`);
    const words = HEADER_WORDS + PER_ZPAGE_ARRAYS * zpages + (zpages * MAX_OBJECTS) / 2;
    const meta = new SharedArrayBuffer(Math.ceil(words / 2) * 8 + 8);
    new Int32Array(meta, 0, HEADER_WORDS)[ZPAGES] = zpages;
    return new CompressedStore({ meta, data: new SharedArrayBuffer(zpages * ZPAGE_SIZE) });
  }

  /** This thread's object over a store another thread made (its handle()). */
  static attach(handle: CompressedStoreHandle): CompressedStore {
    return new CompressedStore(handle);
  }

  private constructor(h: CompressedStoreHandle) {
    this.meta = h.meta;
    this.bytes = new Uint8Array(h.data);
    this.header = new Int32Array(h.meta, 0, HEADER_WORDS);
    this.lock = new SharedMutex(this.header, LOCK);
    const z = (this.zpages = this.header[ZPAGES]);
    let at = HEADER_WORDS * 4;
    const array = (): Int32Array => {
      const a = new Int32Array(h.meta, at, z);
      at += z * 4;
      return a;
    };
    [this.cls, this.used, this.next, this.prev, this.freeStack] = [array(), array(), array(), array(), array()];
    this.lengths = new Uint16Array(h.meta, at, z * MAX_OBJECTS);
    this.stored = new Float64Array(h.meta, h.meta.byteLength - 8, 1);
  }

  handle(): CompressedStoreHandle {
    return { meta: this.meta, data: this.bytes.buffer as SharedArrayBuffer };
  }

  /** Copy `data` (1..MAX_COMPRESSED bytes) in; its slot, or -1 when the store is full. */
  put(data: Uint8Array): number {
    const len = data.byteLength;
    if (!(len >= 1 && len <= MAX_COMPRESSED)) throw new PageStoreError(`cannot store ${len} bytes: objects are 1 to ${MAX_COMPRESSED} bytes`);
    const c = CLASS_OF[len];
    return this.lock.with(() => {
      let z = this.header[HEADS + c] - 1;
      if (z < 0) {
        z = this.takeZpage();
        if (z < 0) return -1;
        this.cls[z] = c + 1;
        this.used[z] = 0;
        this.link(z, c);
        this.header[USED_ZPAGES]++;
      }
      const free = ~this.used[z] & FULL[c];
      const index = 31 - Math.clz32(free & -free);
      this.used[z] |= 1 << index;
      if (this.used[z] === FULL[c]) this.unlink(z, c);
      const slot = z * MAX_OBJECTS + index;
      this.lengths[slot] = len;
      this.bytes.set(data, z * ZPAGE_SIZE + index * SIZES[c]);
      this.stored[0] += len;
      this.header[OBJECTS]++;
      return slot;
    });
  }

  /** A private copy of the object in `slot`. */
  read(slot: number): Uint8Array {
    return this.lock.with(() => {
      const at = this.locate(slot);
      return this.bytes.slice(at, at + this.lengths[slot]);
    });
  }

  /** Byte length of the object in `slot`. */
  lengthOf(slot: number): number {
    return this.lock.with(() => {
      this.locate(slot);
      return this.lengths[slot];
    });
  }

  /** Give `slot` back; its bytes are zeroed, so no guest's data lingers in free space. */
  free(slot: number): void {
    this.lock.with(() => {
      const at = this.locate(slot);
      const z = slot >>> INDEX_BITS;
      const c = this.cls[z] - 1;
      const len = this.lengths[slot];
      this.bytes.fill(0, at, at + len);
      this.lengths[slot] = 0;
      this.stored[0] -= len;
      this.header[OBJECTS]--;
      if (this.used[z] === FULL[c]) this.link(z, c);
      this.used[z] &= ~(1 << (slot & (MAX_OBJECTS - 1)));
      if (this.used[z] === 0) {
        this.unlink(z, c);
        this.cls[z] = 0;
        this.freeStack[this.header[FREE_DEPTH]++] = z;
        this.header[USED_ZPAGES]--;
      }
    });
  }

  stats(): CompressedStoreStats {
    return this.lock.with(() => ({
      capacityBytes: this.zpages * ZPAGE_SIZE,
      usedBytes: this.header[USED_ZPAGES] * ZPAGE_SIZE,
      storedBytes: this.stored[0],
      objects: this.header[OBJECTS],
    }));
  }

  // ---- with the lock held ----

  /** Byte offset of the object in `slot`; PageStoreError unless it is in use. */
  private locate(slot: number): number {
    if (!Number.isInteger(slot) || slot < 0 || slot >= this.zpages * MAX_OBJECTS) throw new PageStoreError(`${slot} is not a compressed store slot`);
    const z = slot >>> INDEX_BITS;
    const index = slot & (MAX_OBJECTS - 1);
    const c = this.cls[z] - 1;
    if (c < 0 || index >= COUNTS[c] || (this.used[z] & (1 << index)) === 0) throw new PageStoreError(`compressed store slot ${slot} is not in use`);
    return z * ZPAGE_SIZE + index * SIZES[c];
  }

  /** A free zpage, or -1. */
  private takeZpage(): number {
    const depth = this.header[FREE_DEPTH];
    if (depth > 0) {
      this.header[FREE_DEPTH] = depth - 1;
      return this.freeStack[depth - 1];
    }
    const top = this.header[TOP];
    if (top === this.zpages) return -1;
    this.header[TOP] = top + 1;
    return top;
  }

  /** Put zpage `z` first on class `c`'s list of zpages with room. */
  private link(z: number, c: number): void {
    const head = this.header[HEADS + c];
    this.prev[z] = 0;
    this.next[z] = head;
    if (head !== 0) this.prev[head - 1] = z + 1;
    this.header[HEADS + c] = z + 1;
  }

  private unlink(z: number, c: number): void {
    const [p, n] = [this.prev[z], this.next[z]];
    if (p !== 0) this.next[p - 1] = n;
    else this.header[HEADS + c] = n;
    if (n !== 0) this.prev[n - 1] = p;
  }
}
