// The host engine through its TypeScript API: several Debian guests in one
// host at once, each with its own console and end; one that panics or is
// stopped does not disturb the others; lifecycle requests in every state.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { Host, HostError, type Vm } from "./host.js";
import { pullDebianImage } from "../images/debian.js";
import { parseKernelImage } from "../arch/riscv/boot-image.js";
import { withCommand, DEFAULT_CMDLINE } from "../cli/run-linux.js";
import { buildBareKernel, bareProgram, haveBareCompiler } from "./testing/bare-kernel.js";
import { FRAME_SIZE, OWNER_HOST } from "../memory/frame-pool.js";

const image = await pullDebianImage({ progress: () => {} });
const kernel = parseKernelImage(new Uint8Array(readFileSync(image.kernelPath)));
const baseInitrd = new Uint8Array(readFileSync(image.initrdPath));

function define(host: Host, name: string, argv: string[], cpus = 1): { vm: Vm; output: () => string } {
  const chunks: Buffer[] = [];
  const vm = host.createVm({
    name, kernel, cpus, memBytes: 128 << 20, cmdline: DEFAULT_CMDLINE,
    initrd: withCommand(baseInitrd, argv, undefined),
    consoleOut: (b) => chunks.push(Buffer.from(b)),
  });
  return { vm, output: () => Buffer.concat(chunks).toString() };
}

test("three VMs in one host run different commands at once; each gets its own output and end; a panic stays in its VM", { timeout: 300_000 }, async () => {
  const host = await Host.create({ pcpus: 2 });
  try {
    const a = define(host, "a", ["uname", "-m"], 2);
    const b = define(host, "b", ["sh", "-c", "echo from-b; exit 3"]);
    const c = define(host, "c", ["sh", "-c", "echo c > /proc/sysrq-trigger"]);
    for (const x of [a, b, c]) x.vm.start();
    assert.deepEqual(host.vms.map((v) => v.state), ["running", "running", "running"]);
    const [ea, eb, ec] = await Promise.all([a, b, c].map((x) => x.vm.waitForEnd()));
    assert.equal(ea.kind, "poweroff");
    assert.match(a.output(), /riscv64/);
    assert.deepEqual(eb, { kind: "exit-status", code: 3 });
    assert.match(b.output(), /from-b/);
    assert.doesNotMatch(b.output(), /riscv64/);
    assert.equal(ec.kind, "panic");
    // Every frame of a stopped VM is back in the pool.
    for (const x of [a, b, c]) assert.equal(host.pool.framesOwnedBy(x.vm.owner), 0, `${x.vm.name} still holds frames`);
    const stats = a.vm.exitStats();
    assert.ok(stats.instructions > 0n && (stats.byReason.get("p2m-fault") ?? 0) > 0);
    // The entropy device's queue notifications came as doorbells, not exits the vCPU waited on.
    assert.ok((stats.byReason.get("doorbell") ?? 0) > 0, "no queue doorbell rung");
  } finally {
    await host.close();
  }
});

test("lifecycle: every request in every state has an answer; stop powers off mid-boot; start boots again", { timeout: 300_000 }, async () => {
  const host = await Host.create({ pcpus: 2 });
  try {
    const { vm, output } = define(host, "life", ["echo", "booted"]);
    assert.equal(vm.state, "created");
    await vm.pause(); // nothing to pause
    assert.throws(() => vm.resume(), HostError);
    vm.start();
    await vm.pause();
    assert.equal(vm.state, "paused");
    assert.ok(vm.stats().vcpus.every((c) => c.state !== "running"), "no vCPU on a pCPU while paused");
    await vm.pause(); // again: nothing
    vm.resume();
    await vm.stop();
    assert.equal(vm.state, "stopped");
    assert.deepEqual(await vm.waitForEnd(), { kind: "stopped", reason: "stopped by the host" });
    vm.start(); // a stopped VM boots again
    assert.equal((await vm.waitForEnd()).kind, "poweroff");
    assert.match(output(), /booted/);
    await vm.destroy();
    assert.equal(vm.state, "destroyed");
    assert.throws(() => vm.start(), HostError);
    assert.equal(host.vm("life"), undefined);
  } finally {
    await host.close();
  }
});

test("bad VM configs are refused with one line", async () => {
  const host = await Host.create({ pcpus: 1, memLimitBytes: 64 << 20 });
  try {
    const base = { kernel, cmdline: "", consoleOut: () => {}, cpus: 1, memBytes: 32 << 20 };
    assert.throws(() => host.createVm({ ...base, cpus: 0 }), /cpus must be 1\.\./);
    assert.throws(() => host.createVm({ ...base, cpus: 99 }), /cpus must be/);
    // More memory than the pool is overcommit (the memory manager makes room), within bounds.
    assert.throws(() => host.createVm({ ...base, memBytes: 16 * 2 ** 30 }), /too large for this host \(at most 8192 MiB with a 64 MiB pool\)/);
    assert.throws(() => host.createVm({ ...base, weight: 0 }), /weight must be 1\.\.65535/);
    assert.throws(() => host.createVm({ ...base, capPct: 150 }), /cap must be/);
    assert.throws(() => host.createVm({ ...base, affinity: [3] }), /pCPU 3 does not exist/);
    assert.throws(() => host.createVm({ ...base, name: "a/b" }), /VM name/);
    assert.throws(() => host.createVm({ ...base, bogus: 1 } as never), /unknown VM option 'bogus'/);
    host.createVm({ ...base, name: "x" });
    assert.throws(() => host.createVm({ ...base, name: "x" }), /exists already/);
  } finally {
    await host.close();
  }
});

test("a VM placed above 2 GiB of the pool runs (host addresses past the signed 32-bit range)", { skip: !haveBareCompiler() && "riscv64-unknown-elf-gcc not installed" }, async () => {
  const host = await Host.create({ pcpus: 1 });
  try {
    // The host holds the first 2 GiB (untouched pages: no host memory), so
    // the VM's hart blocks, doorbells and RAM all come from above.
    host.pool.allocContiguous(2 ** 31 / FRAME_SIZE, OWNER_HOST);
    let text = "";
    const vm = host.createVm({ name: "high", kernel: buildBareKernel(bareProgram("fill")), cmdline: "", cpus: 2, memBytes: 64 << 20, consoleOut: (b) => { text += Buffer.from(b).toString(); } });
    vm.start();
    const deadline = Date.now() + 60_000;
    while (!/filled words=\d+\n/.test(text)) {
      assert.ok(Date.now() < deadline && vm.state === "running", `the VM did not run: ${text} ${JSON.stringify(vm.state === "stopped" ? await vm.waitForEnd() : "")}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    await vm.stop();
  } finally {
    await host.close();
  }
});
