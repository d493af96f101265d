// Memory isolation between VMs of one host (DESIGN.md, "The host layer": one
// frame pool for all VMs). A guest fills its RAM with a secret; the secret is
// then only in frames the pool books to that VM; another guest that reads all
// of its own RAM does not find it, nor does the next VM that gets the first
// one's frames after it is destroyed: frames are zeroed before reuse. The
// guests are bare S-mode programs (testing/bare/fill.c, scan.c) so that
// nothing but the host stands between them and guest-physical memory.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Host, type Vm } from "./host.js";
import { buildBareKernel, bareProgram, haveBareCompiler } from "./testing/bare-kernel.js";
import { FRAME_SIZE } from "../memory/frame-pool.js";

const RAM = 64 << 20;
/** ~secret_seed of testing/bare/secret.h, as the guest computes it. */
const SECRET = ~0x5a17c0ffee15bad5n & 0xffff_ffff_ffff_ffffn;
const noCompiler = !haveBareCompiler() && "riscv64-unknown-elf-gcc not installed (npm test installs gcc-riscv64-unknown-elf)";

/** Start a bare guest and wait until its console shows `marker`; the line is returned. */
async function runUntil(host: Host, name: string, program: string, marker: RegExp): Promise<{ vm: Vm; line: RegExpExecArray }> {
  let text = "";
  const vm = host.createVm({ name, kernel: buildBareKernel(bareProgram(program)), cmdline: "", cpus: 1, memBytes: RAM, consoleOut: (b) => { text += Buffer.from(b).toString(); } });
  vm.start();
  const deadline = Date.now() + 120_000;
  for (;;) {
    const line = marker.exec(text);
    if (line) return { vm, line };
    assert.ok(Date.now() < deadline && vm.state === "running", `${name} did not print ${marker}: ${text}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Frames of the pool holding the secret somewhere, by owner. */
function secretFramesByOwner(host: Host): Map<number, number> {
  const words = new BigUint64Array(host.pool.memory.buffer);
  const byOwner = new Map<number, number>();
  // From address 0: the core's own area below the pool's frames counts too (as owner -1).
  const end = Math.floor(host.pool.memory.buffer.byteLength / FRAME_SIZE);
  for (let f = 0; f < end; f++) {
    for (let i = (f * FRAME_SIZE) / 8, stop = i + FRAME_SIZE / 8; i < stop; i++) {
      if (words[i] === SECRET) {
        const owner = f * FRAME_SIZE < host.pool.base ? -1 : host.pool.ownerOf(f * FRAME_SIZE);
        byOwner.set(owner, (byOwner.get(owner) ?? 0) + 1);
        break;
      }
    }
  }
  return byOwner;
}

/** Frame addresses the pool books to `owner`. */
function framesOf(host: Host, owner: number): Set<number> {
  const frames = new Set<number>();
  const end = Math.floor(host.pool.memory.buffer.byteLength / FRAME_SIZE);
  for (let f = host.pool.base / FRAME_SIZE; f < end; f++) if (host.pool.isAllocated(f * FRAME_SIZE) && host.pool.ownerOf(f * FRAME_SIZE) === owner) frames.add(f * FRAME_SIZE);
  return frames;
}

test("a guest's secret stays in its own frames: another guest and the next owner of its frames never see it", { skip: noCompiler, timeout: 300_000 }, async () => {
  const host = await Host.create({ pcpus: 2, memLimitBytes: 256 << 20 });
  try {
    const a = await runUntil(host, "secret-owner", "fill", /filled words=(\d+)\n/);
    assert.ok(Number(a.line[1]) > (RAM - (1 << 20)) / 8, "the owner filled less than its RAM");
    const holders = secretFramesByOwner(host);
    assert.deepEqual([...holders.keys()], [a.vm.owner], "the secret is in frames of another owner");
    assert.ok(holders.get(a.vm.owner)! >= (RAM >> 12) - 512, "fewer frames hold the secret than the guest wrote");

    const b = await runUntil(host, "neighbour", "scan", /scanned words=(\d+) found=(\d+)\n/);
    assert.ok(Number(b.line[1]) > (RAM - (1 << 20)) / 8);
    assert.equal(b.line[2], "0", "a neighbour read the secret");
    await b.vm.destroy();

    const ownersFrames = framesOf(host, a.vm.owner);
    await a.vm.destroy();
    assert.equal(secretFramesByOwner(host).size, 0, "the secret outlived its VM in the pool");

    const c = await runUntil(host, "next-owner", "scan", /scanned words=(\d+) found=(\d+)\n/);
    const reused = [...framesOf(host, c.vm.owner)].filter((f) => ownersFrames.has(f)).length;
    assert.ok(reused > 1000, `the next VM got only ${reused} of the first one's frames: the test proves nothing`);
    assert.equal(c.line[2], "0", "the next owner of the frames read the secret");
  } finally {
    await host.close();
  }
});
