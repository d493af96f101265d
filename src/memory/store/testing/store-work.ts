// Work for the page store's thread test, done by the main thread and a worker
// (store-worker.ts) on the same CompressedStore and SwapFile at once. Every
// page says whose it is and which it is, so a slot handed to two threads, or
// bytes from another slot, show up as the wrong page.

import { CompressedStore, SwapFile, PAGE_SIZE, compressPage, decompressPage } from "../index.js";

/** Page `i` of thread `tag`: a line of text naming both, then zeros; compresses well. */
export function pageFor(tag: number, i: number): Uint8Array {
  const page = new Uint8Array(PAGE_SIZE);
  new TextEncoder().encodeInto(`thread ${tag} page ${i}; `.repeat(1 + (i % 40)), page);
  return page;
}

/** Slots of pages put by one thread: page i is in store[i] (compressed) and swap[i] (raw). */
export interface PutPages {
  store: number[];
  swap: number[];
}

export function putPages(store: CompressedStore, swap: SwapFile, tag: number, count: number): PutPages {
  const slots: PutPages = { store: [], swap: [] };
  for (let i = 0; i < count; i++) {
    const page = pageFor(tag, i);
    slots.store.push(store.put(compressPage(page)!));
    const s = swap.alloc();
    swap.write(s, page);
    slots.swap.push(s);
  }
  return slots;
}

/** What is wrong with the pages `putPages(…, tag, …)` returned; empty when nothing. */
export function checkPages(store: CompressedStore, swap: SwapFile, tag: number, slots: PutPages): string[] {
  const problems: string[] = [];
  const out = new Uint8Array(PAGE_SIZE);
  slots.store.forEach((slot, i) => {
    decompressPage(store.read(slot), out);
    if (!equal(out, pageFor(tag, i))) problems.push(`thread ${tag} page ${i}: compressed slot ${slot} holds another page`);
  });
  slots.swap.forEach((slot, i) => {
    if (!equal(swap.read(slot), pageFor(tag, i))) problems.push(`thread ${tag} page ${i}: swap slot ${slot} holds another page`);
  });
  return problems;
}

export interface ChurnResult {
  /** What went wrong (the first few), empty when all is well. */
  problems: string[];
  /** Puts and allocs that found their store full. */
  refused: number;
}

/** Put, check and free pages at random, in both stores. */
export function churn(store: CompressedStore, swap: SwapFile, tag: number, operations: number): ChurnResult {
  const problems: string[] = [];
  let refused = 0;
  const held: { i: number; slot: number; swapped: boolean }[] = [];
  const out = new Uint8Array(PAGE_SIZE);
  for (let op = 0; op < operations; op++) {
    const i = (op * 2654435761) >>> 20;
    if (held.length > 0 && (held.length > 200 || i % 3 === 0)) {
      const h = held.splice(i % held.length, 1)[0];
      if (h.swapped) {
        if (!equal(swap.read(h.slot), pageFor(tag, h.i))) problems.push(`thread ${tag}: swap slot ${h.slot} changed under it`);
        swap.free(h.slot);
      } else {
        decompressPage(store.read(h.slot), out);
        if (!equal(out, pageFor(tag, h.i))) problems.push(`thread ${tag}: compressed slot ${h.slot} changed under it`);
        store.free(h.slot);
      }
      continue;
    }
    const swapped = i % 5 === 0;
    const slot = swapped ? swap.alloc() : store.put(compressPage(pageFor(tag, i))!);
    if (slot < 0) {
      refused++; // full for now: the other thread holds the rest
      continue;
    }
    if (swapped) swap.write(slot, pageFor(tag, i));
    held.push({ i, slot, swapped });
  }
  for (const h of held) (h.swapped ? swap.free(h.slot) : store.free(h.slot));
  return { problems: problems.slice(0, 10), refused };
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(b);
}
