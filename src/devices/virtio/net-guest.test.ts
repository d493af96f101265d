// virtio-net's offloads seen from stock Linux guests (the Debian kernel's
// virtio_net driver): two VMs on one socket cable, the sender's driver hands
// the device TSO super-frames with partial checksums, the device segments
// them, and the receiving guest checks every checksum itself (the socket
// carries no offload metadata). Each boot costs seconds.
import { test, before } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { tsvisor, pullImage, ok, reported } from "../../cli/test-tsvisor.js";

before(pullImage);



/** Feature bit `n` of a /sys/bus/virtio/devices/X/features string (bit 0 first). */
const bit = (features: string, n: number) => features[n] === "1";

test("Linux guests negotiate CSUM and TSO, send 4 MiB over TCP as super-frames, and it arrives intact", { timeout: 600_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-offload-"));
  try {
    const sock = join(dir, "lan.sock");
    const up = (ip: string) => `ifconfig eth0 ${ip} netmask 255.255.255.0 up`;
    // The network card is the virtio device with ID 1; InCsumErrors is the last field of the Tcp line of /proc/net/snmp.
    const features = "for d in /sys/bus/virtio/devices/*; do [ $(cat $d/device) = 0x0001 ] && echo features=$(cat $d/features); done";
    const csumErrors = "awk '/^Tcp:/ { if (seen) print \"tcp-csum-errors=\" $NF; seen = 1 }' /proc/net/snmp";
    const receiver = tsvisor(["run", "--net", `socket=listen:${sock}`, "--stats", "--timeout", "400", "--", "sh", "-c", [
      up("10.0.2.1"),
      features,
      "nc -l -p 5000 -e md5sum",
      csumErrors,
    ].join("; ")]);
    const sender = tsvisor(["run", "--net", `socket=connect:${sock}`, "--stats", "--timeout", "400", "--", "sh", "-c", [
      up("10.0.2.2"),
      features,
      "n=0; until ping -c 1 -W 1 10.0.2.1 >/dev/null 2>&1 || [ $n -ge 60 ]; do n=$((n + 1)); done",
      "dd if=/dev/urandom of=/tmp/data bs=1k count=4096 2>/dev/null",
      "echo sent-sum=$(md5sum < /tmp/data | cut -d' ' -f1)",
      "n=0; until nc 10.0.2.1 5000 < /tmp/data > /tmp/answer 2>/dev/null && [ -s /tmp/answer ] || [ $n -ge 30 ]; do sleep 1; n=$((n + 1)); done",
      "echo received-sum=$(cut -d' ' -f1 /tmp/answer)",
      csumErrors,
    ].join("; ")]);
    const [rx, tx] = await Promise.all([receiver, sender]);
    const txOut = reported(ok(tx, "sender"));
    const rxOut = reported(ok(rx, "receiver"));
    for (const [who, out] of [["sender", txOut], ["receiver", rxOut]] as const) {
      const f = out.features ?? "";
      // CSUM 0, GUEST_CSUM 1, GUEST_TSO4 7, GUEST_TSO6 8, HOST_TSO4 11, HOST_TSO6 12, MRG_RXBUF 15
      for (const n of [0, 1, 7, 8, 11, 12, 15]) assert.ok(bit(f, n), `${who}'s driver accepted feature bit ${n}: ${f}`);
      for (const n of [9, 10, 13, 14]) assert.ok(!bit(f, n), `ECN and UFO are not offered: bit ${n}`);
      assert.equal(out["tcp-csum-errors"], "0", `${who}: no TCP checksum errors`);
    }
    assert.match(txOut["sent-sum"], /^[0-9a-f]{32}$/);
    assert.equal(txOut["received-sum"], txOut["sent-sum"], "4 MiB over TCP arrived intact");
    // The sender's driver used TSO: fewer transmit requests than frames on the cable.
    const line = /^ {2}net0 \(socket[^)]*\): rx \d+ frames .*, tx (\d+) frames .*; super-frames: tx (\d+) segmented/m.exec(tx.stderr);
    assert.ok(line, `the sender's stats show super-frames:\n${tx.stderr}`);
    const requests = /^ {2}net0 q1 +\d+ notifies, (\d+) requests/m.exec(tx.stderr);
    assert.ok(requests);
    assert.ok(Number(line[2]) > 0);
    assert.ok(Number(requests[1]) < Number(line[1]), `${requests[1]} transmit requests carried ${line[1]} frames`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
