// A mutex in one Int32 word of shared memory, usable from every thread that
// sees the word (main thread and workers alike).
//
// It is the futex mutex of Drepper's "Futexes Are Tricky" (mutex 2), with
// Atomics.wait/notify as the futex: the word is 0 (unlocked), 1 (locked) or 2
// (locked, and someone may be waiting). Uncontended, lock() is one
// compareExchange and unlock() one sub, about 20 ns together; nobody makes a
// system call unless someone really had to wait. A waiter spins a little
// first, because holders keep the lock for well under a microsecond (the frame
// pool's critical sections are a few stores) and a wait/notify pair costs
// microseconds.
//
// Atomics.wait is allowed on Node's main thread (not on a browser's: a browser
// build will have to keep the main thread off contended locks). The mutex is
// not reentrant, and a thread killed while holding it (worker.terminate() in
// the middle of a critical section) leaves it held for good.

const UNLOCKED = 0;
const LOCKED = 1;
const CONTENDED = 2;
/** Loads of the word before going to sleep; a few hundred ns. */
const SPINS = 100;

export class SharedMutex {
  /** The lock is `words[index]`; it must start at 0 (a fresh SharedArrayBuffer is). */
  constructor(
    private readonly words: Int32Array,
    private readonly index: number,
  ) {}

  lock(): void {
    const w = this.words;
    const i = this.index;
    if (Atomics.compareExchange(w, i, UNLOCKED, LOCKED) === UNLOCKED) return;
    for (let spin = 0; spin < SPINS; spin++) {
      if (Atomics.load(w, i) === UNLOCKED && Atomics.compareExchange(w, i, UNLOCKED, LOCKED) === UNLOCKED) return;
    }
    // Say "someone waits" (2) so the holder's unlock() notifies. When the word
    // was 0 at that moment, the exchange took the lock (as 2: one needless
    // notify later, harmless).
    while (Atomics.exchange(w, i, CONTENDED) !== UNLOCKED) Atomics.wait(w, i, CONTENDED);
  }

  unlock(): void {
    // 1 -> 0: nobody waited. 2 -> 1: release fully and wake one waiter.
    if (Atomics.sub(this.words, this.index, 1) !== LOCKED) {
      Atomics.store(this.words, this.index, UNLOCKED);
      Atomics.notify(this.words, this.index, 1);
    }
  }

  /** Run `body` holding the lock. */
  with<T>(body: () => T): T {
    this.lock();
    try {
      return body();
    } finally {
      this.unlock();
    }
  }
}
