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
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { tsvisor, pullImage } from "../cli/test-tsvisor.js";
import { openVxlanLab } from "./testing/vxlan-lab.js";

before(pullImage);

test("a guest on a VXLAN switch pings a Linux vxlan device and exchanges TCP data with a server behind it", { timeout: 600_000 }, async (t) => {
  const lab = await openVxlanLab(t, 2);
  if (!lab) return;
  const { ns, rootAddr, nsAddr, port, vni, linuxOverlay } = lab;
  const guestOverlay = lab.tsvisorOverlay;
  let server: ReturnType<typeof spawn> | undefined;
  try {
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
    await lab.close();
  }
});
