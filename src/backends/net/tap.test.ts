// The tap backend against the host kernel: create a tap through the backend,
// give it an address, send an ARP request from a guest MAC and expect the
// kernel's ARP reply through onFrame. Needs root and /dev/net/tun (skipped
// otherwise). The tap is not persistent: closing the backend removes it.

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { openNetBackend, parseNetSpec, NetBackendError } from "./net-backend.js";
import { tapRelayPath } from "./tap.js";
import { FrameSink, waitFor } from "./testing.js";

function skipReason(): string | undefined {
  if (process.platform !== "linux") return "tap devices are Linux only";
  if (process.getuid?.() !== 0) return "needs root (CAP_NET_ADMIN) to create a tap";
  if (!existsSync("/dev/net/tun")) return "no /dev/net/tun";
  if (!existsSync(tapRelayPath())) return "build/tap-relay was not built (no C compiler)";
  if (spawnSync("ip", ["-V"]).error) return "no `ip` command (iproute2)";
  return undefined;
}

// Unique per process, so two test runs on one host do not collide.
const ifname = `tsvt${process.pid % 1_000_000}`;
const subnet = `10.99.${process.pid % 250}`;
const linkExists = () => spawnSync("ip", ["link", "show", ifname], { stdio: "ignore" }).status === 0;
const ip = (...args: string[]) => execFileSync("ip", args, { stdio: ["ignore", "ignore", "pipe"] });

/** An ARP request "who has `target`? tell `senderIp`" from `mac`, broadcast. */
function arpRequest(mac: Uint8Array, senderIp: number[], target: number[]): Uint8Array {
  const f = new Uint8Array(42);
  f.fill(0xff, 0, 6);
  f.set(mac, 6);
  f.set([0x08, 0x06], 12); // EtherType ARP
  f.set([0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01], 14); // Ethernet/IPv4, request
  f.set(mac, 22);
  f.set(senderIp, 28);
  f.set(target, 38); // target MAC (32..37) stays zero
  return f;
}

test("tap: the host kernel answers an ARP request from the guest", { skip: skipReason() }, async () => {
  const spec = parseNetSpec(`tap=${ifname},mac=52:54:00:12:34:56`);
  const tap = await openNetBackend(spec);
  try {
    assert.equal(tap.description, `tap:${ifname}`);
    assert.ok(linkExists(), "the backend created the tap");
    await assert.rejects(openNetBackend(spec), (e: unknown) => e instanceof NetBackendError && /Device or resource busy/.test(e.message));
    const sink = new FrameSink(tap);
    ip("addr", "add", `${subnet}.1/24`, "dev", ifname);
    ip("link", "set", ifname, "up");
    const hostIp = subnet.split(".").map(Number).concat(1);
    const guestIp = subnet.split(".").map(Number).concat(2);
    const request = arpRequest(spec.mac!, guestIp, hostIp);
    const isReply = (f: Uint8Array) =>
      f.length >= 42 && f[12] === 0x08 && f[13] === 0x06 && f[21] === 2 && f.subarray(28, 32).every((b, i) => b === hostIp[i]);
    // The link may take a moment to come up; ask until the kernel answers.
    let reply: Uint8Array | undefined;
    for (let i = 0; i < 20 && !reply; i++) {
      tap.send(request);
      reply = await sink.next(isReply, 250).catch(() => undefined);
    }
    assert.ok(reply, "an ARP reply from the host");
    assert.deepEqual([...reply.subarray(0, 6)], [...spec.mac!], "addressed to the guest's MAC");
    assert.deepEqual([...reply.subarray(32, 42)], [...spec.mac!, ...guestIp], "the guest as target");
    assert.ok(tap.stats.txFrames >= 1 && tap.stats.rxFrames >= 1);
  } finally {
    tap.close();
    await waitFor("the tap to disappear", () => !linkExists()).catch(() => {
      spawnSync("ip", ["link", "del", ifname]);
    });
  }
  assert.ok(!linkExists(), "closing the backend removed the tap");
});

test("tap: an interface that is not a tap is refused with one line", { skip: skipReason() }, async () => {
  await assert.rejects(openNetBackend(parseNetSpec("tap=lo")), /^NetBackendError: tap:lo: Invalid argument \(an interface of that name exists and is not a tap device\)$/);
});
