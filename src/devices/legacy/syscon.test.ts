// The power finisher as Linux's syscon-poweroff/-reboot drivers use it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Syscon, type PowerEvent } from "./syscon.js";

test("syscon: poweroff, failure with a code, reboot; other values and widths do nothing", () => {
  const events: PowerEvent[] = [];
  const s = new Syscon((e) => events.push(e));
  s.write(0, 4, 0x5555n);
  s.write(0, 4, (7n << 16n) | 0x3333n);
  s.write(0, 4, 0x7777n);
  s.write(0, 4, 0x1234n);
  s.write(0, 1, 0x55n);
  s.write(4, 4, 0x5555n);
  assert.deepEqual(events, [{ kind: "poweroff" }, { kind: "fail", code: 7 }, { kind: "reboot" }]);
});
