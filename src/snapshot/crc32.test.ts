// The snapshot checksum: zlib's CRC-32 when Node has it, the table otherwise;
// both must give the same values, or a snapshot written by one would be
// refused by the other.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { crc32, crc32Table } from "./crc32.js";

test("crc32: the standard check value, continuation, and the table agreeing with zlib's", () => {
  const check = new TextEncoder().encode("123456789");
  assert.equal(crc32(check), 0xcbf43926);
  assert.equal(crc32Table(check), 0xcbf43926);
  assert.equal(crc32(new Uint8Array(0)), 0);
  // In two pieces, the second continuing from the first.
  assert.equal(crc32(check.subarray(4), crc32(check.subarray(0, 4))), 0xcbf43926);
  for (const n of [1, 3, 4, 5, 4095, 4096, 4097]) {
    const data = randomBytes(n);
    assert.equal(crc32Table(data), crc32(data), `${n} bytes`);
    assert.equal(crc32Table(data, 0x12345678), crc32(data, 0x12345678), `${n} bytes, continued`);
  }
});
