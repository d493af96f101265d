import { test } from "node:test";
import assert from "node:assert/strict";
import { encodeFrame, FrameReader, FramingError } from "./framing.js";
import { MAX_FRAME_BYTES } from "./net-backend.js";

test("frames come out whole however the stream is cut", () => {
  const frames = [Buffer.from("a"), Buffer.alloc(1500, 7), Buffer.from("hello"), Buffer.alloc(MAX_FRAME_BYTES, 3)];
  const stream = Buffer.concat(frames.map(encodeFrame));
  for (const cut of [1, 3, 5, 1000, stream.length]) {
    const reader = new FrameReader();
    const out: Buffer[] = [];
    for (let at = 0; at < stream.length; at += cut) {
      reader.push(stream.subarray(at, at + cut));
      for (let f = reader.next(); f; f = reader.next()) out.push(Buffer.from(f));
    }
    assert.deepEqual(out, frames, `cut every ${cut} bytes`);
    assert.equal(reader.next(), undefined);
  }
});

test("a zero or oversized length is refused when its header arrives, before any body", () => {
  for (const length of [0, MAX_FRAME_BYTES + 1, 0xffffffff]) {
    const reader = new FrameReader();
    const header = Buffer.alloc(4);
    header.writeUInt32BE(length >>> 0);
    reader.push(header);
    assert.throws(() => reader.next(), FramingError);
  }
});
