// A snapshot of a Debian guest in the middle of real work, restored on
// another host: the guest writes random blocks into tmpfs (its RAM) and the
// same bytes onto its virtio-blk disk, and fetches pages over the user-mode
// network from a web server on the host's loopback. The snapshot is taken
// mid-loop; the restored guest finishes the loop and checks every block on
// the disk against its copy in RAM, and every page it fetched. Then the same
// snapshot with a virtqueue tampered (a ring outside RAM, an index out of
// range) is refused with one line. The restored kernel reseeds its random
// number generator: the VM generation ID changed (devices/legacy/vmgenid.ts).
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync, copyFileSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Host } from "../host/host.js";
import { defineGuest } from "../host/testing/guests.js";
import { VmDevices } from "../cli/vm-devices.js";
import { SnapshotFile } from "./format.js";
import { SnapshotError } from "./state.js";
import { rewriteSnapshot } from "./testing/rewrite.js";

const STEPS = 24;

function workload(port: number): string[] {
  return ["sh", "-c", [
    "ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2",
    "i=0",
    `while [ $i -lt ${STEPS} ]; do`,
    "  dd if=/dev/urandom of=/dev/shm/m$i bs=64k count=4 2>/dev/null",
    "  dd if=/dev/shm/m$i of=/dev/vda bs=64k seek=$((i*4)) count=4 conv=fsync 2>/dev/null",
    // A connection cut by the snapshot is retried, as after any network hiccup.
    `  n=0; until wget -q -T 3 -O /dev/shm/w$i http://10.0.2.2:${port}/page$i; do n=$((n+1)); [ $n -lt 20 ] || break; sleep 0.2; done`,
    "  i=$((i+1)); echo step $i",
    "done",
    "bad=0; i=0",
    `while [ $i -lt ${STEPS} ]; do`,
    "  dd if=/dev/vda of=/tmp/back bs=64k skip=$((i*4)) count=4 2>/dev/null",
    "  cmp -s /tmp/back /dev/shm/m$i || bad=$((bad+1))",
    '  [ "$(cat /dev/shm/w$i)" = "page $i" ] || bad=$((bad+1))',
    "  i=$((i+1))",
    "done",
    'echo "verify bad=$bad"',
    // The restore gave the VM a new generation ID: the kernel reseeded its RNG (vmgenid).
    'dmesg | grep -q "virtual machine fork" && echo "rng reseeded"',
  ].join("\n")];
}

test("a Debian guest writing to RAM, a disk and the network is snapshotted mid-loop and finishes correctly on another host", { timeout: 600_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-snapshot-linux-"));
  const server = createServer((req, res) => res.end(`page ${(req.url ?? "").replace("/page", "")}`));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as AddressInfo).port;
  const disk = join(dir, "disk.raw");
  writeFileSync(disk, Buffer.alloc(16 << 20));
  const snap = join(dir, "mid.snap");
  try {
    const a = await Host.create({ pcpus: 2 });
    try {
      const devices = await VmDevices.open([`${disk},format=raw`], ["user"], () => {}, "src");
      const g = defineGuest(a, "src", workload(port), { memBytes: 256 << 20, virtio: devices.devices });
      g.vm.start();
      await g.waitFor(/step 8\n/, 300_000);
      await g.vm.snapshot(snap, { stayPaused: true });
      // The disk stays as the snapshot saw it: the source never runs again.
      await g.vm.destroy();
      await devices.close();
    } finally {
      await a.close();
    }
    copyFileSync(disk, join(dir, "disk-at-snapshot.raw"));

    const b = await Host.create({ pcpus: 2 });
    try {
      // The same card: its MAC is the one the guest's driver read at boot.
      const devices = await VmDevices.open([`${disk},format=raw`], ["user"], () => {}, "src");
      let text = "";
      const vm = b.restoreVm(snap, { name: "restored", virtio: devices.devices, consoleOut: (bytes) => { text += Buffer.from(bytes).toString("latin1"); } });
      const end = await vm.waitForEnd();
      await devices.close();
      assert.deepEqual(end, { kind: "poweroff" }, text);
      assert.match(text, new RegExp(`step ${STEPS}\\n`), text);
      assert.doesNotMatch(text, /step 8\n/, "it went on from where it was, not from the start");
      assert.match(text, /verify bad=0\n/, text);
      assert.match(text, /rng reseeded\n/, "Linux's vmgenid driver saw the restore");

      // Tampered queue state: refused with the field named, nothing left behind.
      const machine = SnapshotFile.open(snap);
      const blk = (machine.json("machine") as { virtio: { deviceId: number; queues: { ready: boolean }[] }[] }).virtio.findIndex((t) => t.deviceId === 2);
      assert.ok(blk >= 0, "the snapshot has the disk");
      machine.close();
      const tamper = async (name: string, edit: (m: Record<string, any>) => void) => {
        const path = join(dir, `${name}.snap`);
        await rewriteSnapshot(snap, path, (m) => {
          assert.ok(m.virtio[blk].queues[0].ready, "the disk's queue was live");
          edit(m);
        });
        return path;
      };
      const outside = await tamper("ring-outside", (m) => { m.virtio[blk].queues[0].desc = "0x10000000"; });
      const index = await tamper("index", (m) => { m.virtio[blk].queues[0].indices.lastAvail = 70000; });
      for (const [path, re] of [[outside, /outside guest RAM|desc/], [index, /lastAvail/]] as const) {
        const devs = await VmDevices.open([`${join(dir, "disk-at-snapshot.raw")},format=raw`], ["user"], () => {}, "src");
        try {
          assert.throws(() => b.restoreVm(path, { name: "tampered", virtio: devs.devices, consoleOut: () => {} }), (e: Error) => {
            assert.ok(e instanceof SnapshotError, e.stack);
            assert.match(e.message, re);
            assert.ok(!e.message.includes("\n"));
            return true;
          });
          assert.ok(b.vm("tampered") === undefined);
        } finally {
          await devs.close();
        }
      }
    } finally {
      await b.close();
    }
  } finally {
    server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
