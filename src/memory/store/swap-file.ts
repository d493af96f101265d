// The swap file: where the memory manager writes guest pages that neither
// stay in RAM nor compress to half (page-codec.ts), one 4 KiB slot per page.
// A slot holds a raw page or a shorter object (a compressed page that was
// swapped in turn); its length is kept, and read() returns exactly what
// write() wrote.
//
// The file is opened once, O_RDWR with mode 0600 (it holds guest memory), and
// truncated: what a previous run left in it is not ours. Slots are written
// with positioned writes (pwrite), so threads need not share a file offset and
// never wait on each other for I/O; only the slot books (a free stack and the
// lengths, in a SharedArrayBuffer) take the SharedMutex. The file grows as
// slots are written and never past its capacity: a slot is below
// capacity / 4096 and a write is at most 4096 bytes.
//
// Other threads attach by handle(): it carries the file descriptor's number,
// which is valid in every worker thread (they share the process's descriptor
// table). Only the SwapFile that open() returned may close(): that closes the
// descriptor and unlinks the file. Every thread must be done with the file
// before: the others see it closed and refuse, but one that checked just
// before the close could still use the number after it, by then perhaps
// another file's.
//
// An I/O failure (ENOSPC, EIO) is a SwapError naming the file and the errno.
// The slot stays allocated, marked unwritten, and the page is not lost: the
// caller still has it, and pauses the VM rather than drop it.

import { closeSync, constants, fchmodSync, fstatSync, openSync, readSync, unlinkSync, writeSync } from "node:fs";
import { SharedMutex } from "../shared-mutex.js";
import { PageStoreError, SwapError } from "./errors.js";
import { PAGE_SIZE } from "./page-codec.js";
import { SLOT_BITS } from "./compressed-store.js";

/** Largest capacity a swap file may have: slots fit in 27 bits, as the compressed store's do (512 GiB). */
export const MAX_SWAP_BYTES = 2 ** SLOT_BITS * PAGE_SIZE;

// The books, in 32-bit words: the header, the free stack of slots, and each
// slot's length: 0 = free, -1 = allocated but not (successfully) written,
// n > 0 = holds n bytes. Slots at or above TOP were never allocated.
const LOCK = 0;
const SLOTS = 1;
const TOP = 2;
const FREE_DEPTH = 3;
const USED = 4;
const CLOSED = 5;
const HEADER_WORDS = 8;
const FREE = 0;
const UNWRITTEN = -1;

/** Plain data naming a swap file, to post to another thread for attach(). */
export interface SwapFileHandle {
  readonly path: string;
  readonly fd: number;
  readonly books: SharedArrayBuffer;
}

export interface SwapFileStats {
  capacityBytes: number;
  usedSlots: number;
  slots: number;
  path: string;
}

/** One line for a failed system call: the file, what failed, the errno. */
function swapError(path: string, what: string, e: unknown): SwapError {
  const code = (e as NodeJS.ErrnoException).code;
  return new SwapError(`swap file ${path}: ${what} failed: ${code ?? (e as Error).message}`, code);
}

export class SwapFile {
  readonly path: string;
  private readonly fd: number;
  private readonly books: SharedArrayBuffer;
  private readonly header: Int32Array;
  private readonly freeStack: Int32Array;
  private readonly lengths: Int32Array;
  private readonly lock: SharedMutex;
  /** Only the creator closes the file (see above). */
  private readonly creator: boolean;
  private detached = false;

  /** Create (or truncate) the file at `path` for `capacityBytes` (rounded down to 4 KiB slots). */
  static open(path: string, capacityBytes: number): SwapFile {
    const slots = Math.floor(capacityBytes / PAGE_SIZE);
    if (!(slots >= 1 && slots <= 2 ** SLOT_BITS)) throw new RangeError(`swap file capacity ${capacityBytes} is not between ${PAGE_SIZE} and ${MAX_SWAP_BYTES} bytes`);
    let fd: number;
    try {
      fd = openSync(path, constants.O_RDWR | constants.O_CREAT | constants.O_TRUNC, 0o600);
    } catch (e) {
      throw swapError(path, "open", e);
    }
    try {
      // O_CREAT's mode applies to a new file only; a leftover one keeps its own.
      // Not to devices (a test's /dev/full): their mode is not ours to change.
      const st = fstatSync(fd);
      if (st.isFile() && (st.mode & 0o077) !== 0) fchmodSync(fd, 0o600);
    } catch (e) {
      closeSync(fd);
      throw swapError(path, "chmod", e);
    }
    const books = new SharedArrayBuffer((HEADER_WORDS + 2 * slots) * 4);
    new Int32Array(books, 0, HEADER_WORDS)[SLOTS] = slots;
    return new SwapFile({ path, fd, books }, true);
  }

  /** This thread's object over a swap file another thread opened (its handle()). */
  static attach(handle: SwapFileHandle): SwapFile {
    return new SwapFile(handle, false);
  }

  private constructor(h: SwapFileHandle, creator: boolean) {
    this.path = h.path;
    this.fd = h.fd;
    this.books = h.books;
    this.creator = creator;
    this.header = new Int32Array(h.books, 0, HEADER_WORDS);
    const slots = this.header[SLOTS];
    this.freeStack = new Int32Array(h.books, HEADER_WORDS * 4, slots);
    this.lengths = new Int32Array(h.books, (HEADER_WORDS + slots) * 4, slots);
    this.lock = new SharedMutex(this.header, LOCK);
  }

  handle(): SwapFileHandle {
    return { path: this.path, fd: this.fd, books: this.books };
  }

  /** A free slot, or -1 when the file is full. */
  alloc(): number {
    this.checkOpen();
    return this.lock.with(() => {
      let slot: number;
      const depth = this.header[FREE_DEPTH];
      if (depth > 0) slot = this.freeStack[(this.header[FREE_DEPTH] = depth - 1)];
      else if (this.header[TOP] < this.header[SLOTS]) slot = this.header[TOP]++;
      else return -1;
      Atomics.store(this.lengths, slot, UNWRITTEN);
      this.header[USED]++;
      return slot;
    });
  }

  /** Write `data` (1..4096 bytes; it may be a view on shared memory) into `slot`, replacing what it held. */
  write(slot: number, data: Uint8Array): void {
    this.checkOpen();
    this.checkSlot(slot);
    const len = data.byteLength;
    if (!(len >= 1 && len <= PAGE_SIZE)) throw new PageStoreError(`cannot swap ${len} bytes: a slot holds 1 to ${PAGE_SIZE}`);
    // Unwritten until the write is complete: a failed one leaves no half-old,
    // half-new page for read() to return.
    Atomics.store(this.lengths, slot, UNWRITTEN);
    try {
      for (let done = 0; done < len; ) {
        const n = writeSync(this.fd, data, done, len - done, slot * PAGE_SIZE + done);
        if (n === 0) throw Object.assign(new Error("wrote nothing"), { code: "EIO" });
        done += n;
      }
    } catch (e) {
      throw swapError(this.path, `write of slot ${slot}`, e);
    }
    Atomics.store(this.lengths, slot, len);
  }

  /** What was last written into `slot`, as a private copy. */
  read(slot: number): Uint8Array {
    this.checkOpen();
    const len = this.checkSlot(slot);
    if (len === UNWRITTEN) throw new PageStoreError(`swap slot ${slot} of ${this.path} holds nothing: never written, or its last write failed`);
    const out = new Uint8Array(len);
    try {
      for (let done = 0; done < len; ) {
        const n = readSync(this.fd, out, done, len - done, slot * PAGE_SIZE + done);
        if (n === 0) throw Object.assign(new Error("file ends early"), { code: "EIO" });
        done += n;
      }
    } catch (e) {
      throw swapError(this.path, `read of slot ${slot}`, e);
    }
    return out;
  }

  /** Give `slot` back. Its bytes stay in the file until overwritten or the file is unlinked. */
  free(slot: number): void {
    this.checkOpen();
    this.lock.with(() => {
      this.checkSlot(slot);
      Atomics.store(this.lengths, slot, FREE);
      this.freeStack[this.header[FREE_DEPTH]++] = slot;
      this.header[USED]--;
    });
  }

  stats(): SwapFileStats {
    const slots = this.header[SLOTS];
    return { capacityBytes: slots * PAGE_SIZE, usedSlots: Atomics.load(this.header, USED), slots, path: this.path };
  }

  /** The creator: close the descriptor and unlink the file, for every thread.
   *  An attached object: stop using the file, which stays open for the others. */
  close(): void {
    if (this.detached) return;
    this.detached = true;
    if (!this.creator) return;
    Atomics.store(this.header, CLOSED, 1);
    closeSync(this.fd);
    try {
      unlinkSync(this.path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw swapError(this.path, "unlink", e);
    }
  }

  private checkOpen(): void {
    if (this.detached || Atomics.load(this.header, CLOSED) !== 0) throw new PageStoreError(`swap file ${this.path} is closed`);
  }

  /** The length word of `slot`; PageStoreError unless the slot is allocated. */
  private checkSlot(slot: number): number {
    if (!Number.isInteger(slot) || slot < 0 || slot >= this.header[SLOTS]) throw new PageStoreError(`${slot} is not a slot of swap file ${this.path}`);
    const len = Atomics.load(this.lengths, slot);
    if (len === FREE) throw new PageStoreError(`swap slot ${slot} of ${this.path} is not allocated`);
    return len;
  }
}
