// Per-port rate limits as Firecracker configures them for its devices: two
// token buckets, one counting bytes (bandwidth) and one counting frames (ops),
// each described by its size, an optional one-time burst and the time the
// bucket takes to refill from empty to full. The refill rate is size /
// refill time.
//
// Firecracker's limiter delays a device's queue when a bucket runs dry. A
// switch port has no queue to hold frames in, so here the limiter is a policer,
// as Open vSwitch's ingress policing (ingress_policing_rate / _burst) is: a
// frame over the limit is dropped, and the switch counts the drop. TCP in the
// guest sees the loss and slows down.
//
// Semantics kept from Firecracker's TokenBucket:
// - A bucket starts full; the one-time burst is extra credit spent first and
//   never refilled, and the refill clock starts once it is spent.
// - A bucket with size 0 or refill time 0 does not limit.
// - A single frame larger than the whole bucket is not refused forever: it
//   passes when the bucket is not in debt and leaves the bucket in debt by the
//   excess (Firecracker's "over-consumption", which there blocks the device
//   for the equivalent time), so the long-run rate still holds.

export interface TokenBucketConfig {
  /** Tokens the bucket holds when full (bytes for bandwidth, frames for ops). */
  size: number;
  /** Extra tokens available once, at the start, spent before the bucket. */
  oneTimeBurst?: number;
  /** Milliseconds to refill the bucket from empty to full. */
  refillTimeMs: number;
}

export interface RateLimiterConfig {
  /** Bytes: every frame costs its length. */
  bandwidth?: TokenBucketConfig;
  /** Frames: every frame costs one. */
  ops?: TokenBucketConfig;
}

/** Milliseconds from any fixed origin, never going backwards. */
export type Clock = () => number;

export const monotonicClock: Clock = () => performance.now();

function checkCount(what: string, value: number | undefined): void {
  if (value !== undefined && !(Number.isFinite(value) && value >= 0)) {
    throw new RangeError(`rate limit: ${what} must be a number >= 0, not ${value}`);
  }
}

export class TokenBucket {
  private readonly size: number;
  private readonly refillPerMs: number;
  private burst: number;
  /** Tokens in the bucket; negative after an over-sized frame (a debt refilled first). */
  private budget: number;
  private lastRefill: number;

  constructor(config: TokenBucketConfig, private readonly now: Clock = monotonicClock) {
    checkCount("size", config.size);
    checkCount("one-time burst", config.oneTimeBurst);
    checkCount("refill time", config.refillTimeMs);
    this.size = config.size;
    this.refillPerMs = config.refillTimeMs > 0 ? config.size / config.refillTimeMs : 0;
    this.burst = config.oneTimeBurst ?? 0;
    this.budget = config.size;
    this.lastRefill = now();
  }

  /** False for a bucket that never refuses (size or refill time 0). */
  get limits(): boolean {
    return this.size > 0 && this.refillPerMs > 0;
  }

  /** Tokens that could be spent now (one-time burst included). */
  get available(): number {
    this.refill();
    return this.burst + Math.max(0, this.budget);
  }

  /** Whether `tokens` could be taken now (nothing is taken). */
  canTake(tokens: number): boolean {
    if (!this.limits || tokens <= this.burst) return true;
    this.refill();
    const fromBudget = tokens - this.burst;
    return fromBudget <= this.budget || (fromBudget > this.size && this.budget >= 0);
  }

  /** Takes `tokens` (the caller asked canTake first). */
  take(tokens: number): void {
    if (!this.limits) return;
    if (tokens <= this.burst) {
      this.burst -= tokens;
      this.lastRefill = this.now(); // the refill starts after the burst is spent
      return;
    }
    this.refill();
    this.budget -= tokens - this.burst;
    this.burst = 0;
  }

  /** Takes `tokens` if the bucket has them; false (nothing taken) otherwise. */
  tryTake(tokens: number): boolean {
    if (!this.canTake(tokens)) return false;
    this.take(tokens);
    return true;
  }

  private refill(): void {
    const now = this.now();
    const elapsed = now - this.lastRefill;
    this.lastRefill = now;
    if (this.burst > 0 || elapsed <= 0) return;
    this.budget = Math.min(this.size, this.budget + elapsed * this.refillPerMs);
  }
}

/** A frame passes only when both buckets have room for it; then both are charged. */
export class RateLimiter {
  private readonly bandwidth: TokenBucket | undefined;
  private readonly ops: TokenBucket | undefined;

  constructor(config: RateLimiterConfig, now: Clock = monotonicClock) {
    this.bandwidth = config.bandwidth && new TokenBucket(config.bandwidth, now);
    this.ops = config.ops && new TokenBucket(config.ops, now);
  }

  /** Charges a frame of `bytes` and says whether it may pass. */
  allow(bytes: number): boolean {
    if (this.bandwidth && !this.bandwidth.canTake(bytes)) return false;
    if (this.ops && !this.ops.canTake(1)) return false;
    this.bandwidth?.take(bytes);
    this.ops?.take(1);
    return true;
  }
}
