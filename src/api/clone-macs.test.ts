// A clone's cards: the addresses a VM created under its name gets, and the
// change its guest makes.
import { test } from "node:test";
import assert from "node:assert/strict";
import { cloneNets, macChangeScript } from "./clone-macs.js";
import { defaultMac } from "../cli/vm-devices.js";
import { formatMac } from "../backends/net/net-spec.js";

test("cloneNets: each card gets the address a VM created under the clone's name would get", () => {
  const snapshot = ["user,mac=52:54:00:01:02:03", "switch=lan,mac=52:54:00:0a:0b:0c,vlan=5"];
  const { nets, changes } = cloneNets(snapshot, "web-2");
  const first = formatMac(defaultMac("web-2user", 0));
  const second = formatMac(defaultMac("web-2switch=lan,vlan=5", 1));
  assert.deepEqual(nets, [`user,mac=${first}`, `switch=lan,vlan=5,mac=${second}`]);
  assert.deepEqual(changes, [{ from: "52:54:00:01:02:03", to: first }, { from: "52:54:00:0a:0b:0c", to: second }]);
  // Another clone gets others.
  assert.notDeepEqual(cloneNets(snapshot, "web-3").nets, nets);
  assert.deepEqual(cloneNets([], "x"), { nets: [], changes: [] });
});

test("macChangeScript: the interface with each old address takes its new one; a refusal is an exit status", () => {
  const script = macChangeScript([{ from: "52:54:00:01:02:03", to: "52:54:00:aa:bb:cc" }]);
  assert.match(script, /^ {4}52:54:00:01:02:03\) ip link set dev "\$ifc" address 52:54:00:aa:bb:cc \|\| /m);
  assert.match(script, /exit \$status$/);
});
