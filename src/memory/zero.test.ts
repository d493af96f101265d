import { test } from "node:test";
import assert from "node:assert/strict";
import { isAllZero } from "./zero.js";

test("isAllZero finds a single non-zero byte anywhere, aligned or not, in any length", () => {
  const buf = new Uint8Array(4096 + 16);
  for (const [offset, length] of [[0, 4096], [8, 4096], [3, 4096], [0, 13], [5, 7], [0, 0]]) {
    const view = buf.subarray(offset, offset + length);
    assert.equal(isAllZero(view), true, `zeros at ${offset}+${length}`);
    for (const at of [0, length >> 1, length - 1].filter((a) => a >= 0 && a < length)) {
      view[at] = 1;
      assert.equal(isAllZero(view), false, `a one at ${at} of ${offset}+${length}`);
      view[at] = 0;
    }
  }
  buf[20] = 9; // outside the view: not its business
  assert.equal(isAllZero(buf.subarray(0, 20)), true);
});
