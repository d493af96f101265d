// Page sharing, as KSM and ESXi's transparent page sharing do it: a scanner
// walks the guests' private pages a few at a time, hashes each, and merges
// pages with identical bytes into one read-only frame mapped by every p2m
// entry that had them. A store to a shared page is a p2m fault that gives
// the writer its own copy again (p2m.ts breakSharing). All-zero pages need
// no frame at all: their entries become "zero" and a touch maps a fresh one.
//
// How a page becomes a candidate (KSM's stable and unstable trees, as maps):
// - a page whose hash changed since the scanner last saw it is volatile:
//   remembered, not merged (merging it would only be broken again);
// - a page whose hash is that of a shared frame is merged into that frame;
// - a page whose hash another private page of the group had on this round is
//   merged with it: one of the two frames becomes the shared frame.
// Candidates are compared byte for byte with the VMs held (held-pages.ts)
// before anything changes, so a hash collision or a page written meanwhile
// merges nothing.
//
// The group keeps one reference of its own on every shared frame, so a
// frame never goes back to the pool when its last mapping breaks away: a
// hart may still fetch instructions from it (fetch translations of shared
// frames are cached, and may stay stale until FENCE.I, as Zifencei allows).
// Frames no guest maps any more are freed in a later pass, with every VM of
// the group held, so each hart has flushed its TLB before it runs again.
//
// Scope: a VM shares only with VMs of its share group (by default its own
// name: sharing within the VM). Sharing across VMs saves the most (identical
// guests run the same kernel), but it is a side channel: a VM can tell that
// another holds a page with given bytes by timing a write to its own copy
// (a copy-on-write break is slow), which is why ESXi turned inter-VM sharing
// off by default in 2014. Put VMs in one group only when they trust each other.

import type { FramePool, FrameOwner } from "../frame-pool.js";
import { FRAME_SIZE } from "../frame-pool.js";
import { Absent, P2M_PRESENT, P2M_SHARED, absentEntry, entryFrame, isPresent } from "../p2m-entry.js";
import { withClaims, withVcpusHeld, finish, putBack, type Claim, type ManagedVm } from "./held-pages.js";

const WORDS = FRAME_SIZE / 4;

export interface SharingOptions {
  /** Pages looked at per pass, over all VMs (KSM's pages_to_scan). */
  pagesPerPass: number;
  /** Pause between passes (KSM's sleep_millisecs). */
  intervalMs: number;
}

export interface SharingStats {
  /** Frames that are shared now, and the guest pages mapping them. */
  sharedFrames: number;
  sharingPages: number;
  /** Pages merged and zero pages dropped since the start. */
  merged: number;
  zeroPagesDropped: number;
  /** Full rounds over all guest memory. */
  fullScans: number;
  pagesScanned: number;
}

interface Cursor {
  vm: ManagedVm;
  next: number;
  /** Each page's hash when last seen (0: not seen). */
  lastHash: Uint32Array;
}

interface Candidate {
  /** "join": merge into the frame an earlier "pair" of this pass makes. */
  kind: "zero" | "stable" | "pair" | "join";
  vm: ManagedVm;
  index: number;
  seen: number;
  hash: number;
  shared?: number;
  other?: { vm: ManagedVm; index: number; seen: number };
  /** For "join": the pair it joins. */
  pair?: Candidate;
}

export class PageSharing {
  private readonly cursors = new Map<ManagedVm, Cursor>();
  /** Per share group: hash -> a shared frame with those bytes. */
  private readonly stable = new Map<string, Map<number, number>>();
  /** Per share group: hash -> a private page seen with it this round. */
  private unstable = new Map<string, Map<number, { vm: ManagedVm; index: number }>>();
  /** Per share group: hash -> the pair found this pass (later pages with it join its frame). */
  private readonly pairsThisPass = new Map<string, Map<number, Candidate>>();
  /** The frame each pair of this pass became (apply). */
  private readonly pairFrames = new Map<Candidate, number>();
  private readonly groupOwners = new Map<string, FrameOwner>();
  private vmTurn = 0;
  private readonly counts = { merged: 0, zeroPagesDropped: 0, fullScans: 0, pagesScanned: 0 };

  constructor(
    private readonly pool: FramePool,
    /** An owner id for a new share group's frames. */
    private readonly newOwner: () => FrameOwner,
  ) {}

  add(vm: ManagedVm): void {
    this.cursors.set(vm, { vm, next: 0, lastHash: new Uint32Array(vm.p2m.count) });
  }

  remove(vm: ManagedVm): void {
    this.cursors.delete(vm);
    // A hash that pointed at one of its pages would be compared against
    // whatever the frame holds later: forget the round's private pages.
    this.unstable.get(vm.shareGroup)?.clear();
    this.releaseAll(); // its group's last VM: the group lets go of its frames
  }

  /** Look at up to `budget` pages, then merge what was found. Resolves to the pages merged or dropped. */
  async pass(budget: number): Promise<number> {
    const vms = [...this.cursors.values()];
    await this.reapUnmapped();
    if (vms.length === 0) return 0;
    const candidates: Candidate[] = [];
    let left = budget;
    for (let turns = 0; left > 0 && turns < vms.length; turns++) {
      const cur = vms[this.vmTurn++ % vms.length];
      const n = Math.min(left, cur.vm.p2m.count - cur.next);
      this.scan(cur, n, candidates);
      left -= n;
      if (cur.next >= cur.vm.p2m.count) this.endRound(cur);
    }
    this.pairsThisPass.clear();
    if (candidates.length === 0) return 0;
    // Pairs first: the pages that join them need their frame.
    candidates.sort((x, y) => Number(y.kind === "pair") - Number(x.kind === "pair"));
    let done = 0;
    // One claim per page: a page in two candidates stays in the first.
    const claims = new Map<string, Claim>();
    const key = (vm: ManagedVm, index: number) => `${vm.name}/${index}`;
    const unique = candidates.filter((c) => {
      if (claims.has(key(c.vm, c.index)) || (c.other && claims.has(key(c.other.vm, c.other.index)))) return false;
      claims.set(key(c.vm, c.index), { vm: c.vm, index: c.index, seen: c.seen, ignoreAccessed: true });
      if (c.other) claims.set(key(c.other.vm, c.other.index), { vm: c.other.vm, index: c.other.index, seen: c.other.seen, ignoreAccessed: true });
      return true;
    });
    await withClaims([...claims.values()], (claimed) => {
      const byPage = new Map<string, Claim>(claimed.map((c) => [key(c.vm, c.index), c]));
      const take = (vm: ManagedVm, index: number) => byPage.get(key(vm, index));
      for (const c of unique) done += this.apply(c, take(c.vm, c.index), c.other && take(c.other.vm, c.other.index));
      for (const c of byPage.values()) if (c.vm.p2m.entry(c.index) === absentEntry(Absent.Busy)) putBack(c); // not used after all
    });
    this.pairFrames.clear();
    return done;
  }

  /** Free the shared frames no guest maps any more (only the group's reference is left). */
  private async reapUnmapped(): Promise<void> {
    for (const [group, stable] of this.stable) {
      const owner = this.groupOwners.get(group)!;
      const unmapped = [...stable].filter(([, f]) => this.pool.ownerOf(f) === owner && this.pool.refCount(f) === 1);
      if (unmapped.length === 0) continue;
      const vms = [...this.cursors.keys()].filter((vm) => vm.shareGroup === group);
      const free = () => {
        for (const [hash, f] of unmapped) {
          if (this.pool.refCount(f) !== 1) continue; // merged into again meanwhile
          this.pool.free(f);
          stable.delete(hash);
        }
      };
      if (vms.length === 0) free();
      else await withVcpusHeld(vms, free);
    }
  }

  /** Drop the group's reference to its frames, for groups with no VM left (the
   *  VMs' own references go with their p2m). */
  releaseAll(): void {
    for (const [group, stable] of this.stable) {
      const owner = this.groupOwners.get(group)!;
      if ([...this.cursors.keys()].some((vm) => vm.shareGroup === group)) continue;
      for (const f of stable.values()) if (this.pool.ownerOf(f) === owner && this.pool.refCount(f) > 0) this.pool.free(f);
      stable.clear();
    }
  }

  stats(): SharingStats {
    let sharedFrames = 0;
    for (const m of this.stable.values()) for (const f of m.values()) if (this.isLiveShared(f, undefined) && this.pool.refCount(f) > 1) sharedFrames++;
    let sharingPages = 0;
    for (const c of this.cursors.values()) sharingPages += c.vm.p2m.census().shared;
    return { sharedFrames, sharingPages, ...this.counts };
  }

  private scan(cur: Cursor, n: number, out: Candidate[]): void {
    const { vm } = cur;
    const group = vm.shareGroup;
    const stable = this.mapFor(this.stable, group);
    const unstable = this.mapFor(this.unstable, group);
    const pairs = this.mapFor(this.pairsThisPass, group);
    const words = this.pool.words;
    for (let i = cur.next, end = cur.next + n; i < end; i++) {
      const e = vm.p2m.entry(i);
      if (!isPresent(e) || (e & P2M_SHARED) !== 0) continue;
      this.counts.pagesScanned++;
      const frame = entryFrame(e);
      const hash = hashFrame(words, frame >>> 2);
      if (cur.lastHash[i] !== hash) {
        cur.lastHash[i] = hash; // changed since last look: volatile for now
        continue;
      }
      if (hash === ZERO_HASH && isZeroFrame(words, frame >>> 2)) {
        out.push({ kind: "zero", vm, index: i, seen: e, hash });
        continue;
      }
      const shared = stable.get(hash);
      if (shared !== undefined && this.isLiveShared(shared, group)) {
        out.push({ kind: "stable", vm, index: i, seen: e, hash, shared });
        continue;
      }
      const pair = pairs.get(hash);
      if (pair) {
        out.push({ kind: "join", vm, index: i, seen: e, hash, pair });
        continue;
      }
      const twin = unstable.get(hash);
      if (twin && !(twin.vm === vm && twin.index === i) && this.cursors.has(twin.vm)) {
        const te = twin.vm.p2m.entry(twin.index);
        if (isPresent(te) && (te & P2M_SHARED) === 0) {
          unstable.delete(hash);
          const c: Candidate = { kind: "pair", vm, index: i, seen: e, hash, other: { vm: twin.vm, index: twin.index, seen: te } };
          pairs.set(hash, c);
          out.push(c);
          continue;
        }
      }
      unstable.set(hash, { vm, index: i });
    }
    cur.next += n;
  }

  /** Every VM of the group has been walked once more: the unstable map starts over (KSM does the same). */
  private endRound(cur: Cursor): void {
    cur.next = 0;
    if ([...this.cursors.values()].every((c) => c.next === 0 || c.vm.shareGroup !== cur.vm.shareGroup)) {
      this.unstable.get(cur.vm.shareGroup)?.clear();
      this.counts.fullScans++;
    }
  }

  /** Carry out one candidate on its claimed entries; the pages it saved. */
  private apply(c: Candidate, mine: Claim | undefined, theirs: Claim | undefined): number {
    if (!mine) return 0;
    const words = this.pool.words;
    const frame = entryFrame(mine.was!);
    if (c.kind === "zero") {
      if (!isZeroFrame(words, frame >>> 2)) return 0;
      finish(mine, absentEntry(Absent.Zero));
      this.pool.free(frame);
      mine.vm.p2m.notePopulated(-1);
      this.counts.zeroPagesDropped++;
      return 1;
    }
    if (c.kind === "stable" || c.kind === "join") {
      const shared = c.kind === "join" ? this.pairFrames.get(c.pair!) : c.shared!;
      if (shared === undefined) return 0; // its pair did not merge
      // The group's reference keeps it alive: only reapUnmapped() (on this thread) frees it.
      if (!this.isLiveShared(shared, c.vm.shareGroup) || !sameFrame(words, frame >>> 2, shared >>> 2)) return 0;
      this.pool.retain(shared);
      finish(mine, shared | P2M_PRESENT | P2M_SHARED);
      this.pool.free(frame);
      this.counts.merged++;
      return 1;
    }
    if (!theirs) return 0;
    const other = entryFrame(theirs.was!);
    if (other === frame || !sameFrame(words, frame >>> 2, other >>> 2)) return 0;
    // My frame becomes the group's shared frame (with the group's own
    // reference, and one per mapping); theirs goes back to the pool.
    this.pool.transfer(frame, this.ownerOf(c.vm.shareGroup));
    this.pool.retain(frame);
    this.pool.retain(frame);
    finish(mine, frame | P2M_PRESENT | P2M_SHARED);
    finish(theirs, frame | P2M_PRESENT | P2M_SHARED);
    this.pool.free(other);
    this.mapFor(this.stable, c.vm.shareGroup).set(c.hash, frame);
    this.pairFrames.set(c, frame);
    this.counts.merged++;
    return 1;
  }

  /** Is `frame` still a shared frame of the group (a frame freed and reused is not)? */
  private isLiveShared(frame: number, group: string | undefined): boolean {
    const owner = this.pool.ownerOf(frame);
    return group === undefined ? [...this.groupOwners.values()].includes(owner) : owner === this.groupOwners.get(group);
  }

  private ownerOf(group: string): FrameOwner {
    let o = this.groupOwners.get(group);
    if (o === undefined) {
      o = this.newOwner();
      this.groupOwners.set(group, o);
    }
    return o;
  }

  private mapFor<V>(maps: Map<string, Map<number, V>>, group: string): Map<number, V> {
    let m = maps.get(group);
    if (!m) {
      m = new Map();
      maps.set(group, m);
    }
    return m;
  }
}

/** A 32-bit hash of a frame's 1024 words (FNV-style, two lanes); 0 is never returned. */
export function hashFrame(words: Int32Array, first: number): number {
  let a = 0x811c9dc5 | 0;
  let b = 0x01000193 | 0;
  for (let i = first, end = first + WORDS; i < end; i += 2) {
    a = Math.imul(a ^ words[i], 0x01000193);
    b = Math.imul(b ^ words[i + 1], 0x5bd1e995);
  }
  return ((a ^ (b >>> 13) ^ Math.imul(b, 0x27d4eb2d)) >>> 0) || 1;
}

const ZERO_HASH = hashFrame(new Int32Array(WORDS), 0);

function isZeroFrame(words: Int32Array, first: number): boolean {
  for (let i = first, end = first + WORDS; i < end; i++) if (words[i] !== 0) return false;
  return true;
}

function sameFrame(words: Int32Array, a: number, b: number): boolean {
  for (let i = 0; i < WORDS; i++) if (words[a + i] !== words[b + i]) return false;
  return true;
}
