// Boot benchmark: boots the pulled Debian kernel and tsvisor's initramfs with
// the command `true`, with the interpreter alone and with binary translation
// (the default), and measures, from process start, the time until init
// prints a marker (kernel boot done, userspace reached) and until the guest
// powers off (the process ends). When qemu-system-riscv64 is installed
// (Debian's qemu-system-misc), QEMU's TCG boots the same kernel and the same
// initramfs on its own `virt` machine in the same run, and the ratios are
// printed. QEMU's time includes its OpenSBI firmware, tsvisor needs none.
//
// Both machines get the same devices, because init loads a driver module for
// each (modprobe: a fork, an exec and a module load, all cold code): the
// serial console (`--console ttyS0`: `run -- CMD` defaults to
// virtio-console, which QEMU's `virt` has not), virtio-rng (tsvisor always
// has one) and virtio-balloon with free page reporting (tsvisor's default).
// tsvisor's VM generation ID has no counterpart on QEMU's riscv `virt`; its
// driver is built into the kernel.
//
//   npm run bench:boot              1 hart, 3 runs each, best time
//   node dist/bench/boot.js --cpus 2 --runs 5

import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from "node:fs";
import { tmpdir, cpus as hostCpus } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { pullDebianImage } from "../src/images/debian.js";
import { commandArchive } from "../src/images/initramfs.js";
import { DEFAULT_CMDLINE } from "../src/cli/run-linux.js";

const MARKER = "tsvisor-bench-userspace";
const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const bin = join(root, "bin", "tsvisor.js");

interface Timing {
  markerS: number;
  poweroffS: number;
}

function fail(message: string): never {
  process.stderr.write(`bench:boot: ${message}\n`);
  process.exit(1);
}

/** Run a command, timing the marker on its stdout and its exit. */
function timeBoot(cmd: string, args: string[]): Promise<Timing> {
  return new Promise((resolve, reject) => {
    const start = performance.now();
    let markerS: number | undefined;
    let seen = "";
    const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => {
      if (markerS !== undefined) return;
      seen = (seen + d.toString("latin1")).slice(-200);
      if (seen.includes(MARKER)) markerS = (performance.now() - start) / 1000;
    });
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("error", reject);
    child.on("close", (code) => {
      const poweroffS = (performance.now() - start) / 1000;
      if (code !== 0) return reject(new Error(`${cmd} exited with status ${code}: ${stderr.trim().split("\n").pop() ?? ""}`));
      if (markerS === undefined) return reject(new Error(`${cmd}: init's marker never appeared`));
      resolve({ markerS, poweroffS });
    });
  });
}

async function best(label: string, runs: number, once: () => Promise<Timing>): Promise<Timing> {
  let b: Timing | undefined;
  for (let i = 0; i < runs; i++) {
    const t = await once();
    process.stderr.write(`  ${label} run ${i + 1}: userspace ${t.markerS.toFixed(2)} s, poweroff ${t.poweroffS.toFixed(2)} s\n`);
    if (!b || t.poweroffS < b.poweroffS) b = t;
  }
  return b!;
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { cpus: { type: "string", default: "1" }, runs: { type: "string", default: "3" } } });
  const harts = Number(values.cpus);
  const runs = Number(values.runs);
  const image = await pullDebianImage({ progress: (l) => process.stderr.write(`${l}\n`) });
  const cmdline = `${DEFAULT_CMDLINE} tsvisor.marker=${MARKER}`;
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-bench-"));
  try {
    // QEMU gets the very initrd tsvisor builds for `-- true`: the image's
    // initramfs with the command archive appended.
    const base = readFileSync(image.initrdPath);
    const extra = commandArchive(["true"]);
    const pad = (4 - (base.length % 4)) % 4;
    const initrd = join(dir, "initrd-true.cpio");
    writeFileSync(initrd, Buffer.concat([base, Buffer.alloc(pad), extra]));

    console.log(`Boot of Debian's ${image.kernelVersion} kernel to init's marker and to poweroff, ${harts} hart(s), 512 MiB, best of ${runs}`);
    console.log(`host: ${hostCpus()[0]?.model ?? "unknown CPU"}, Node ${process.version}`);
    const tsvisor = (jit: string) => () =>
      timeBoot(process.execPath, [bin, "run", "--jit", jit, "--cpus", String(harts), "--mem", "512M", "--net", "none", "--console", "ttyS0", "--append", cmdline, "--", "true"]);
    const interp = await best("tsvisor --jit off", runs, tsvisor("off"));
    const ts = await best("tsvisor --jit on", runs, tsvisor("on"));

    let qemu: Timing | undefined;
    if (spawnSync("sh", ["-c", "command -v qemu-system-riscv64"]).status === 0) {
      qemu = await best("qemu", runs, () =>
        timeBoot("qemu-system-riscv64", [
          "-M", "virt", "-smp", String(harts), "-m", "512M", "-nographic", "-no-reboot",
          "-kernel", image.kernelPath, "-initrd", initrd, "-append", cmdline,
          "-device", "virtio-rng-device", "-device", "virtio-balloon-device,free-page-reporting=on",
        ]));
    }
    const row = (name: string, t: Timing) => console.log(`${name.padEnd(32)} ${t.markerS.toFixed(2).padStart(8)} s ${t.poweroffS.toFixed(2).padStart(10)} s`);
    console.log(`${"".padEnd(32)} ${"userspace".padStart(10)} ${"poweroff".padStart(12)}`);
    row("tsvisor, interpreter", interp);
    row("tsvisor, JIT", ts);
    console.log(`JIT speed-up over the interpreter: userspace ${(interp.markerS / ts.markerS).toFixed(2)}x, poweroff ${(interp.poweroffS / ts.poweroffS).toFixed(2)}x`);
    if (qemu) {
      row("QEMU TCG (qemu-system-riscv64)", qemu);
      console.log(`ratio tsvisor JIT/QEMU: userspace ${(ts.markerS / qemu.markerS).toFixed(2)}x, poweroff ${(ts.poweroffS / qemu.poweroffS).toFixed(2)}x`);
      console.log(`ratio tsvisor interpreter/QEMU: userspace ${(interp.markerS / qemu.markerS).toFixed(2)}x, poweroff ${(interp.poweroffS / qemu.poweroffS).toFixed(2)}x`);
    } else {
      console.log("QEMU: qemu-system-riscv64 not installed (apt-get install qemu-system-misc), no ratio");
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => fail(e instanceof Error ? e.message : String(e)));
