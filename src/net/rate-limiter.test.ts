// Token buckets on a hand-driven clock: a full bucket lets a burst through,
// then the refill rate decides; the one-time burst comes first and never
// returns; a frame larger than the bucket passes once and leaves a debt;
// bandwidth and ops both have to agree.

import { test } from "node:test";
import assert from "node:assert/strict";
import { RateLimiter, TokenBucket } from "./rate-limiter.js";

function manualClock(): { now: () => number; advance: (ms: number) => void } {
  let t = 1000;
  return { now: () => t, advance: (ms) => (t += ms) };
}

test("token bucket: starts full, refills at size / refill time, never above size", () => {
  const clock = manualClock();
  const bucket = new TokenBucket({ size: 1000, refillTimeMs: 100 }, clock.now);
  assert.ok(bucket.tryTake(600));
  assert.ok(bucket.tryTake(400));
  assert.equal(bucket.tryTake(1), false, "empty");
  clock.advance(50); // half the refill time: half the bucket
  assert.equal(bucket.available, 500);
  assert.equal(bucket.tryTake(501), false);
  assert.ok(bucket.tryTake(500));
  clock.advance(10_000);
  assert.equal(bucket.available, 1000, "capped at the size");
});

test("token bucket: the one-time burst is spent first and not refilled", () => {
  const clock = manualClock();
  const bucket = new TokenBucket({ size: 100, oneTimeBurst: 1000, refillTimeMs: 1000 }, clock.now);
  assert.equal(bucket.available, 1100);
  assert.ok(bucket.tryTake(1000)); // all from the burst
  assert.equal(bucket.available, 100);
  assert.ok(bucket.tryTake(100));
  assert.equal(bucket.tryTake(1), false);
  clock.advance(500);
  assert.equal(bucket.available, 50, "only the bucket refills");
});

test("token bucket: size 0 or refill time 0 means no limit, as in Firecracker", () => {
  assert.ok(new TokenBucket({ size: 0, refillTimeMs: 100 }).tryTake(1e9));
  assert.ok(new TokenBucket({ size: 10, refillTimeMs: 0 }).tryTake(1e9));
  assert.throws(() => new TokenBucket({ size: -1, refillTimeMs: 1 }), /size must be a number >= 0/);
  assert.throws(() => new TokenBucket({ size: 1, refillTimeMs: NaN }), /refill time/);
});

test("token bucket: a frame larger than the bucket passes when not in debt, then the debt is refilled first", () => {
  const clock = manualClock();
  const bucket = new TokenBucket({ size: 100, refillTimeMs: 100 }, clock.now);
  assert.ok(bucket.tryTake(300), "over-consumption: passes, 200 in debt");
  assert.equal(bucket.tryTake(300), false, "in debt: refused");
  clock.advance(200); // pays the debt
  assert.equal(bucket.available, 0);
  assert.ok(bucket.tryTake(300), "no debt: passes again, 300 in debt");
  clock.advance(350);
  assert.equal(bucket.available, 50);
});

test("rate limiter: bandwidth and ops both decide; a refused frame costs nothing", () => {
  const clock = manualClock();
  const limiter = new RateLimiter(
    { bandwidth: { size: 3000, refillTimeMs: 1000 }, ops: { size: 2, refillTimeMs: 1000 } },
    clock.now,
  );
  assert.ok(limiter.allow(1000));
  assert.ok(limiter.allow(1000));
  assert.equal(limiter.allow(100), false, "out of ops though bytes remain");
  clock.advance(500); // one op and 1500 bytes back
  assert.equal(limiter.allow(2600), false, "out of bytes though an op remains");
  assert.ok(limiter.allow(2500), "the refused frame took no op");
  assert.equal(limiter.allow(1), false);
});

test("rate limiter: a steady stream is held to the configured rate", () => {
  const clock = manualClock();
  const limiter = new RateLimiter({ bandwidth: { size: 10_000, refillTimeMs: 100 } }, clock.now); // 100 kB/s
  let passed = 0;
  for (let ms = 0; ms < 10_000; ms++) {
    clock.advance(1);
    for (let i = 0; i < 10; i++) if (limiter.allow(1000)) passed += 1000; // offered: 10 MB/s
  }
  assert.ok(Math.abs(passed - 1_010_000) <= 1000, `${passed} bytes passed in 10 s`);
});
