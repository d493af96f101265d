// Hostile guests cannot starve the others (the engine's issue, "Bad input"):
// vCPUs spinning with interrupts off, a guest storming its sibling with IPIs
// (an SBI exit to the main thread each) and a guest whose hart halts run
// next to a Debian guest that must still boot and answer, while the main
// thread (the devices, the host's own I/O) keeps its event loop turning.
// The hostile guests are bare S-mode programs (testing/bare/).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { Host, type Vm } from "./host.js";
import { buildBareKernel, bareProgram, haveBareCompiler } from "./testing/bare-kernel.js";
import { pullDebianImage } from "../images/debian.js";
import { parseKernelImage } from "../arch/riscv/boot-image.js";
import { withCommand, DEFAULT_CMDLINE } from "../cli/run-linux.js";
import { monoNs } from "./pcpu-protocol.js";

const noCompiler = !haveBareCompiler() && "riscv64-unknown-elf-gcc not installed (npm test installs gcc-riscv64-unknown-elf)";

async function startBare(host: Host, program: string, cpus: number, marker: string): Promise<Vm> {
  let text = "";
  const vm = host.createVm({ name: program, kernel: buildBareKernel(bareProgram(program)), cmdline: "", cpus, memBytes: 64 << 20, consoleOut: (b) => { text += Buffer.from(b).toString(); } });
  vm.start();
  const deadline = Date.now() + 60_000;
  while (!text.includes(marker)) {
    assert.ok(Date.now() < deadline && vm.state === "running", `${program} did not say '${marker}': ${text}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return vm;
}

const runNs = (vm: Vm) => vm.stats().vcpus.reduce((a, c) => a + c.runNs, 0);

test("spinning vCPUs with interrupts off, an IPI storm and a halted hart starve neither a Debian guest nor the main thread", { skip: noCompiler, timeout: 300_000 }, async (t) => {
  const image = await pullDebianImage({ progress: () => {} });
  const host = await Host.create({ pcpus: 2 });
  let timer: NodeJS.Timeout | undefined;
  try {
    // Unpacking the kernel takes the main thread a while: before the clock starts.
    const kernel = parseKernelImage(new Uint8Array(readFileSync(image.kernelPath)));
    const initrd = withCommand(new Uint8Array(readFileSync(image.initrdPath)), ["sh", "-c", "echo victim-$((6*7))"], undefined);
    const spin = await startBare(host, "spin", 2, "spinning");
    const storm = await startBare(host, "ipi-storm", 2, "storm");
    const halt = await startBare(host, "halt", 1, "halted");

    let out = "";
    const victim = host.createVm({
      name: "victim", kernel, initrd, cpus: 1, memBytes: 128 << 20, cmdline: DEFAULT_CMDLINE,
      consoleOut: (b) => { out += Buffer.from(b).toString(); },
    });
    const t0 = monoNs();
    const halted0 = runNs(halt);
    // The main thread's event loop, from the victim's start (its images load a piece per turn): the largest gap between 10 ms ticks.
    let last = monoNs();
    let worstGapMs = 0;
    timer = setInterval(() => {
      const now = monoNs();
      worstGapMs = Math.max(worstGapMs, (now - last) / 1e6);
      last = now;
    }, 10);
    victim.start();
    const end = await victim.waitForEnd();
    const wall = monoNs() - t0;
    assert.equal(end.kind, "poweroff", out.slice(-2000));
    assert.match(out, /victim-42/);
    // Five runnable vCPUs of equal weight on two pCPUs: a fair share is 40 % of one.
    const share = victim.stats().vcpus[0].runNs / wall;
    t.diagnostic(`Debian guest: ${(wall / 1e9).toFixed(1)} s to poweroff, ${(share * 100).toFixed(1)} % of one pCPU; worst event-loop gap ${worstGapMs.toFixed(0)} ms`);
    assert.ok(share > 0.15, `the Debian guest ran only ${(share * 100).toFixed(1)} % of one pCPU`);
    assert.ok(runNs(halt) - halted0 < wall * 0.02, "a halted hart kept a pCPU busy");
    assert.equal(halt.stats().vcpus[0].state, "blocked");
    // A stalled event loop stops for good; on a 2-core machine with five
    // busy vCPUs the OS alone deschedules the main thread for ~100 ms at times.
    assert.ok(worstGapMs < 1000, `the main thread's event loop stalled for ${worstGapMs.toFixed(0)} ms`);
    for (const vm of [spin, storm]) assert.equal(vm.state, "running");
    assert.ok((storm.exitStats().byReason.get("sbi") ?? 0) > 1000, "the storm made few SBI exits: the test proves little");
  } finally {
    clearInterval(timer);
    await host.close();
  }
});
