// tsvisor's socket backends against QEMU's: QEMU (no guest, `-M none`) joins a
// `-netdev stream` server and a `-netdev dgram` socket on one hub, so a frame
// that tsvisor's Unix backend sends comes out of QEMU's UDP socket into
// tsvisor's UDP backend, and back. This checks that both speak QEMU's formats.
// Skipped when qemu-system-riscv64 is not installed.

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openNetBackend, parseNetSpec } from "./net-backend.js";
import { FrameSink, frameTag, freeUdpPorts, sameBytes, testFrame, waitFor } from "./testing.js";

const QEMU = "qemu-system-riscv64";
function skipReason(): string | undefined {
  const v = spawnSync(QEMU, ["--version"], { encoding: "utf8" });
  if (v.error) return `${QEMU} is not installed`;
  const [major, minor] = (/version (\d+)\.(\d+)/.exec(v.stdout) ?? []).slice(1).map(Number);
  if (!(major > 7 || (major === 7 && minor >= 2))) return "-netdev stream and dgram need QEMU 7.2 or newer";
  return undefined;
}
const skip = skipReason();

test("frames cross QEMU's -netdev stream and -netdev dgram both ways", { skip }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-qemu-net-"));
  const path = join(dir, "qemu.sock");
  const [qemuPort, ourPort] = await freeUdpPorts(2);
  const qemu = spawn(QEMU, [
    "-M", "none", "-nographic", "-nodefaults",
    "-netdev", `stream,id=s0,server=on,addr.type=unix,addr.path=${path}`,
    "-netdev", `dgram,id=d0,local.type=inet,local.host=127.0.0.1,local.port=${qemuPort},remote.type=inet,remote.host=127.0.0.1,remote.port=${ourPort}`,
    "-netdev", "hubport,id=h0,hubid=0,netdev=s0",
    "-netdev", "hubport,id=h1,hubid=0,netdev=d0",
  ], { stdio: "ignore" });
  const opened: { close(): void }[] = [];
  try {
    // QEMU can take seconds to start on a loaded machine (CI runs Linux boots
    // beside this test): wait for its socket before opening the backends, so
    // the connect backend's retry back-off does not eat the frame window.
    await waitFor("QEMU to create its stream socket", () => existsSync(path), 30_000);
    const stream = await openNetBackend(parseNetSpec(`socket=connect:${path}`));
    opened.push(stream);
    const dgram = await openNetBackend(parseNetSpec(`socket=udp:127.0.0.1:${ourPort},peer=127.0.0.1:${qemuPort}`));
    opened.push(dgram);
    const atStream = new FrameSink(stream);
    const atDgram = new FrameSink(dgram);
    const out = testFrame(1, 1, 100);
    const back = testFrame(2, 2, 1514);
    // QEMU may not have accepted the connection or bound its UDP port yet: send until it passes.
    await waitFor("frames through QEMU", () => {
      if (!atDgram.frames.length) stream.send(out);
      if (!atStream.frames.length) dgram.send(back);
      return atDgram.frames.length > 0 && atStream.frames.length > 0;
    }, 15_000);
    assert.ok(sameBytes(await atDgram.next((f) => frameTag(f) === 1), out));
    assert.ok(sameBytes(await atStream.next((f) => frameTag(f) === 2), back));
  } finally {
    for (const b of opened) b.close();
    qemu.kill();
    rmSync(dir, { recursive: true, force: true });
  }
});
