// Auto-converge (QEMU's cpu-throttle, migration/ram.c mig_throttle_guest_down):
// when a VM dirties its memory faster than a copy of it can catch up, its
// vCPUs are slowed through the scheduler's cap, more at each round that does
// not shrink the dirty set. Live migration and live snapshots use it.

/** QEMU's defaults: cpu-throttle-initial 20 %, cpu-throttle-increment 10 %, at most 99 %. */
export const THROTTLE_INITIAL_PCT = 20;
export const THROTTLE_INCREMENT_PCT = 10;
export const THROTTLE_MAX_PCT = 99;

/** A round "does not shrink" the dirty set when it keeps more than this share of the previous one. */
const SHRINK_RATIO = 0.9;

/** The throttle after `current`: one step more. */
export function nextThrottle(current: number): number {
  return current === 0 ? THROTTLE_INITIAL_PCT : Math.min(THROTTLE_MAX_PCT, current + THROTTLE_INCREMENT_PCT);
}

/**
 * The scheduler cap (percent of one pCPU, 0 = none) that slows a VM by `pct`
 * percent: of the cap its user set, else of all its vCPUs running flat out
 * (no more than the host's pCPUs). `pct` 0 gives back the user's cap.
 */
export function throttledCap(pct: number, userCapPct: number, cpus: number, hostCapPct: number): number {
  if (pct === 0) return userCapPct;
  const full = Math.min(cpus * 100, hostCapPct);
  const base = userCapPct > 0 ? Math.min(userCapPct, full) : full;
  return Math.max(1, Math.floor((base * (100 - pct)) / 100));
}

/** Counts rounds that did not shrink the dirty set and says when to throttle more. */
export class ConvergenceWatch {
  private previous = Infinity;
  private notShrinking = 0;

  /** Record a round's dirty page count; true when the throttle should go up a step. */
  round(dirtyPages: number, roundsBeforeStep: number): boolean {
    this.notShrinking = dirtyPages > this.previous * SHRINK_RATIO ? this.notShrinking + 1 : 0;
    this.previous = dirtyPages;
    if (this.notShrinking < roundsBeforeStep) return false;
    this.notShrinking = 0;
    return true;
  }
}
