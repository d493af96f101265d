import { test } from "node:test";
import assert from "node:assert/strict";
import { ProgressLine } from "./progress-line.js";

function fake(isTTY: boolean, columns = 0) {
  const out = { isTTY, columns, text: "", write(s: string) { out.text += s; return true; } };
  return out;
}

test("without a terminal: a line of its own per step, the same step once", () => {
  const out = fake(false);
  const line = new ProgressLine(out as unknown as NodeJS.WriteStream);
  assert.equal(line.inPlace, false);
  line.update("round 0, 1 MiB", "0");
  line.update("round 0, 2 MiB", "0");
  line.update("round 1, 3 MiB", "1");
  line.done();
  assert.equal(out.text, "round 0, 1 MiB\nround 1, 3 MiB\n");
});

test("on a terminal: one line rewritten in place, cut to its width, erased at the end", () => {
  const out = fake(true, 11);
  const line = new ProgressLine(out as unknown as NodeJS.WriteStream, true);
  line.update("round 0", "0");
  line.update("round 0, 2 MiB sent", "0");
  line.done();
  assert.equal(out.text, "\r\x1b[2Kround 0\r\x1b[2Kround 0, 2\r\x1b[2K");
  const quiet = fake(true, 80);
  new ProgressLine(quiet as unknown as NodeJS.WriteStream, true).done();
  assert.equal(quiet.text, "", "nothing shown, nothing erased");
});

test("CI=true: lines, even on a terminal", () => {
  const saved = process.env.CI;
  process.env.CI = "true";
  try {
    assert.equal(new ProgressLine(fake(true, 80) as unknown as NodeJS.WriteStream).inPlace, false);
    process.env.CI = "false";
    assert.equal(new ProgressLine(fake(true, 80) as unknown as NodeJS.WriteStream).inPlace, true);
  } finally {
    if (saved === undefined) delete process.env.CI;
    else process.env.CI = saved;
  }
});
