// The exit mailbox between a pCPU worker and the main thread (the I/O side),
// as KVM's run record is between the kernel and the VMM: the worker leaves
// an exit the main thread must handle (MMIO, SBI, a halted hart) in the
// vCPU's run record in shared memory, posts, and sleeps until the answer;
// the main thread handles it with the devices and answers. One Int32 word
// per vCPU (in the scheduler's table) carries the state; one host-wide
// doorbell word wakes the main thread, which waits on it asynchronously
// (Atomics.waitAsync) so its event loop keeps serving host I/O.

import { H_DOORBELL, type Scheduler } from "./scheduler.js";

// ES2024's Atomics.waitAsync (in Node since 16); TypeScript's ES2022 lib lacks it.
const waitAsync = (Atomics as unknown as {
  waitAsync(a: Int32Array, i: number, v: number): { async: boolean; value: Promise<string> | string };
}).waitAsync;

export enum Mailbox {
  Empty = 0,
  /** The worker posted an exit and waits. */
  Posted = 1,
  /** Answers: go on running the vCPU... */
  Resume = 2,
  /** ...or end its turn: HSM stopped it, or its VM ended or is pausing... */
  Stop = 3,
  /** ...or it suspended (HSM suspend): block until an interrupt. */
  Block = 4,
}

export type Answer = Mailbox.Resume | Mailbox.Stop | Mailbox.Block;

/** Loads of the mailbox before the worker sleeps on it (about 20 us). */
const SPIN_BEFORE_WAIT = 4000;

/** Wake the main thread: an exit was posted or a queue doorbell rung. */
export function ringHostDoorbell(sched: Scheduler): void {
  Atomics.add(sched.words, H_DOORBELL, 1);
  Atomics.notify(sched.words, H_DOORBELL);
}

/** Worker side: post vCPU `v`'s exit and wait for the answer. */
export function postExitAndWait(sched: Scheduler, v: number): Answer {
  const w = sched.words;
  const i = sched.mailboxIndex(v);
  Atomics.store(w, i, Mailbox.Posted);
  ringHostDoorbell(sched);
  // Most answers come within tens of microseconds: spin a little before
  // sleeping, which saves the futex wake-up on the way back.
  for (let spin = 0; spin < SPIN_BEFORE_WAIT && Atomics.load(w, i) === Mailbox.Posted; spin++) {}
  while (Atomics.load(w, i) === Mailbox.Posted) Atomics.wait(w, i, Mailbox.Posted);
  const answer = Atomics.load(w, i) as Answer;
  Atomics.store(w, i, Mailbox.Empty);
  return answer;
}

/** Main-thread side: answer vCPU `v`'s posted exit. */
export function answerExit(sched: Scheduler, v: number, answer: Answer): void {
  const i = sched.mailboxIndex(v);
  Atomics.store(sched.words, i, answer);
  Atomics.notify(sched.words, i);
}

export function isPosted(sched: Scheduler, v: number): boolean {
  return Atomics.load(sched.words, sched.mailboxIndex(v)) === Mailbox.Posted;
}

/** Loads of the doorbell after a pass before waiting for it (a few microseconds). */
const DOORBELL_SPIN = 2000;

/** The longest the exit service keeps the main thread without a break. */
const MAX_BUSY_MS = 2;

/**
 * Main thread: call `serve` whenever the doorbell rings, until `stop()`.
 * The doorbell's value changes with every post; waiting for it to differ
 * from the value seen before the last scan loses no post.
 */
export function serveDoorbell(sched: Scheduler, serve: () => void): { stop(): void } {
  let running = true;
  const w = sched.words;
  const loop = async () => {
    let busySince = performance.now();
    while (running) {
      const seen = Atomics.load(w, H_DOORBELL);
      serve();
      if (!running) break;
      // A vCPU that just got its answer often exits again within microseconds
      // (a driver polling a register, a claim then a complete): look for that
      // a moment before going back to the event loop's far slower wake-up.
      for (let spin = 0; spin < DOORBELL_SPIN && Atomics.load(w, H_DOORBELL) === seen; spin++) {}
      const r = waitAsync(w, H_DOORBELL, seen);
      if (r.async) {
        await r.value;
        busySince = performance.now();
      } else if (performance.now() - busySince > MAX_BUSY_MS) {
        // Posts keep coming (a guest storming the main thread with exits):
        // let the event loop run its timers and host I/O before going on.
        await new Promise((resolve) => setImmediate(resolve));
        busySince = performance.now();
      }
    }
  };
  void loop();
  return {
    stop() {
      running = false;
      Atomics.add(w, H_DOORBELL, 1);
      Atomics.notify(w, H_DOORBELL);
    },
  };
}
