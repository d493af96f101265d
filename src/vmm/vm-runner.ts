// Drives a VirtMachine in real time on Node's event loop: run rounds of slices
// for a few milliseconds, then yield so host input (terminal, pipe) and timers
// get in; when every hart waits for an interrupt, sleep on the host until the
// next guest timer or until input arrives, so an idle guest costs no host CPU.

import type { VirtMachine, VmEnd } from "./virt-machine.js";

/** Instructions per hart per round: about a millisecond of guest time, which
 *  bounds interrupt latency between harts and for device input. */
export const SLICE_INSNS = 100_000;
/** Host time spent running rounds before yielding to the event loop. */
const RUN_MS = 20;
/** Longest idle sleep: device state the machine polls (the RTC alarm) is checked this often. */
const MAX_IDLE_MS = 50;

export interface RunControl {
  /** Resolve the current idle sleep early (new input arrived). */
  wake(): void;
  /** End the run from the host side (Ctrl-A X, a signal). */
  stop(reason: string): void;
}

export type RunOutcome = { kind: "guest"; end: VmEnd } | { kind: "host"; reason: string };

export function runMachine(vm: VirtMachine, attach?: (control: RunControl) => void): Promise<RunOutcome> {
  return new Promise((resolve, reject) => {
    let wakeTimer: NodeJS.Timeout | undefined;
    let stopped: string | undefined;
    const step = () => {
      wakeTimer = undefined;
      if (stopped !== undefined) return resolve({ kind: "host", reason: stopped });
      try {
        const until = performance.now() + RUN_MS;
        for (;;) {
          const r = vm.runRound(SLICE_INSNS);
          if (r.kind === "ended") return resolve({ kind: "guest", end: r.end });
          if (r.kind === "idle") {
            const ms = vm.msUntilNextTimer();
            wakeTimer = setTimeout(step, Math.min(ms ?? MAX_IDLE_MS, MAX_IDLE_MS));
            return;
          }
          if (performance.now() >= until) break;
        }
        setImmediate(step);
      } catch (e) {
        reject(e);
      }
    };
    attach?.({
      wake: () => {
        if (wakeTimer !== undefined) {
          clearTimeout(wakeTimer);
          wakeTimer = undefined;
          setImmediate(step);
        }
      },
      stop: (reason) => {
        stopped = reason;
        if (wakeTimer !== undefined) {
          clearTimeout(wakeTimer);
          wakeTimer = undefined;
          setImmediate(step);
        }
      },
    });
    setImmediate(step);
  });
}
