// A tsvisor guest on a switch with a VXLAN uplink talks to Linux's own vxlan
// device: the test (root) makes a network namespace joined to this one by a
// veth pair, puts a vxlan device in it (`ip link add vx0 type vxlan id VNI
// dstport PORT remote ...`), and boots the stock guest with `--net
// switch=vx,vxlan=VNI,remote=...`. The guest pings the Linux side's overlay
// address and exchanges TCP data with a server running in the namespace.
// Skipped with a message where namespaces or vxlan are not available. All
// traffic stays on the veth pair and inside the namespace.

import { test, before } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { createSocket } from "node:dgram";
import { promisify } from "node:util";
import type { AddressInfo } from "node:net";
import { tsvisor, pullImage } from "../cli/test-tsvisor.js";

const run = promisify(execFile);

async function works(file: string, args: string[]): Promise<boolean> {
  try {
    await run(file, args);
    return true;
  } catch {
    return false;
  }
}

before(pullImage);

test("a guest on a VXLAN switch pings a Linux vxlan device and exchanges TCP data with a server behind it", { timeout: 600_000 }, async (t) => {
  if (process.platform !== "linux" || process.getuid?.() !== 0) return t.skip("needs root on Linux to create a network namespace");
  const id = `${process.pid}`.slice(-6);
  const ns = `tsvisor-vg-${id}`;
  const [vethRoot, vethNs] = [`tsvg${id}r`, `tsvg${id}n`];
  const x = (process.pid + 7) % 250;
  const [rootAddr, nsAddr] = [`10.202.${x}.1`, `10.202.${x}.2`];
  const [guestOverlay, linuxOverlay] = [`192.168.${x}.1`, `192.168.${x}.2`];
  const vni = 5200 + x;
  const ip = (...args: string[]) => run("ip", args);
  if (!(await works("ip", ["netns", "add", ns]))) return t.skip("`ip netns add` is not available here");
  let server: ReturnType<typeof spawn> | undefined;
  try {
    await ip("link", "add", vethRoot, "type", "veth", "peer", "name", vethNs);
    await ip("link", "set", vethNs, "netns", ns);
    await ip("addr", "add", `${rootAddr}/30`, "dev", vethRoot);
    await ip("link", "set", vethRoot, "up");
    await ip("-n", ns, "addr", "add", `${nsAddr}/30`, "dev", vethNs);
    await ip("-n", ns, "link", "set", vethNs, "up");
    // veth leaves checksums to "hardware" that is not there: a TCP segment the
    // vxlan device sends would reach tsvisor's UDP socket with only the
    // pseudo-header in its checksum field (CHECKSUM_PARTIAL is not resolved
    // for a local socket). A physical NIC fills it in; here the kernel must.
    if (!(await works("ip", ["netns", "exec", ns, "ethtool", "-K", vethNs, "tx", "off"]))) return t.skip("needs ethtool to turn off the veth's checksum offload");
    const s = createSocket("udp4");
    await new Promise<void>((r) => s.bind(0, rootAddr, r));
    const port = (s.address() as AddressInfo).port;
    await new Promise<void>((r) => s.close(() => r()));
    if (!(await works("ip", ["-n", ns, "link", "add", "vx0", "type", "vxlan", "id", `${vni}`, "dstport", `${port}`, "remote", rootAddr, "local", nsAddr]))) {
      return t.skip("the kernel has no vxlan support");
    }
    await ip("-n", ns, "addr", "add", `${linuxOverlay}/24`, "dev", "vx0");
    await ip("-n", ns, "link", "set", "vx0", "up");

    // The server behind the Linux vxlan device: answers each connection with the byte count and sha256 of what it got.
    const code = `require("node:net").createServer((c) => {
        const h = require("node:crypto").createHash("sha256"); let n = 0;
        c.on("data", (d) => { h.update(d); n += d.length; });
        c.on("end", () => c.end(n + " " + h.digest("hex") + "\\n"));
      }).listen(7000, "${linuxOverlay}", () => console.log("ready"));`;
    server = spawn("ip", ["netns", "exec", ns, process.execPath, "-e", code], { stdio: ["ignore", "pipe", "inherit"] });
    await new Promise<void>((resolve, reject) => {
      server!.stdout!.once("data", () => resolve());
      server!.once("close", (c) => reject(new Error(`the namespace's server ended (${c})`)));
    });

    const payload = Array.from({ length: 20000 }, (_, i) => `${i + 1}\n`).join("");
    // VXLAN adds 50 bytes around each frame (RFC 7348 5): the overlay's MTU is 1450 on a 1500-byte underlay.
    const script = [
      "ip link set eth0 mtu 1450 up",
      `ip addr add ${guestOverlay}/24 dev eth0`,
      `ping -c 3 -W 5 ${linuxOverlay} >/dev/null && echo ping=ok`,
      `echo "tcp=$(seq 1 20000 | nc ${linuxOverlay} 7000)"`,
    ].join("\n");
    const r = await tsvisor(["run", "--mem", "256M", "--net", `switch=vx,vxlan=${vni},local=${rootAddr}:${port},remote=${nsAddr}:${port}`, "--", "sh", "-c", script]);
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /^ping=ok$/m);
    const sha = createHash("sha256").update(payload).digest("hex");
    assert.match(r.stdout, new RegExp(`^tcp=${payload.length} ${sha}$`, "m"), r.stdout);
  } finally {
    server?.kill();
    await works("ip", ["link", "del", vethRoot]);
    await works("ip", ["netns", "del", ns]);
  }
});
