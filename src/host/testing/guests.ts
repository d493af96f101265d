// Debian guests for the host engine's tests (host.test.ts's way, shared by
// scheduling.test.ts, starvation.test.ts and destroy.test.ts): the cached
// Debian kernel and initramfs with a command appended, a VM defined through
// the Host API whose console output is kept and watched, and run-time
// measurements from vm.stats(); static riscv64 programs from testing/guest/
// built for the guest (as smp-guest.test.ts builds its own).
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, renameSync, statSync } from "node:fs";
import { join } from "node:path";
import type { Host, Vm, VmConfig } from "../host.js";
import { pullDebianImage } from "../../images/debian.js";
import { parseKernelImage } from "../../arch/riscv/boot-image.js";
import { withCommand, DEFAULT_CMDLINE } from "../../cli/run-linux.js";
import { monoNs } from "../pcpu-protocol.js";
import { root } from "../../cli/test-tsvisor.js";

const image = await pullDebianImage({ progress: () => {} });
export const kernel = parseKernelImage(new Uint8Array(readFileSync(image.kernelPath)));
const baseInitrd = new Uint8Array(readFileSync(image.initrdPath));

/** A guest that boots, prints `hog-ready` and spins in user space for ever. */
export const HOG = ["sh", "-c", "echo hog-ready; while :; do :; done"];

export interface Guest {
  vm: Vm;
  /** Everything the guest printed so far. */
  output(): string;
  /** Resolves once the output matches `re`; rejects after `timeoutMs`. */
  waitFor(re: RegExp, timeoutMs: number): Promise<void>;
}

export interface GuestOptions extends Partial<Pick<VmConfig, "cpus" | "memBytes" | "weight" | "capPct" | "affinity" | "virtio" | "balloon" | "shareGroup">> {
  /** The command's stdin, /tsvisor/stdin in the guest. */
  stdin?: Uint8Array;
}

/** Define (not start) a VM running `argv` in the Debian guest, 1 vCPU and 128 MiB unless told. */
export function defineGuest(host: Host, name: string, argv: string[], opts: GuestOptions = {}): Guest {
  // The UART hands over one byte at a time: appended to a string (cheap), and
  // looked at by the watchers every 10 ms rather than at every byte.
  let text = "";
  let watchers: (() => void)[] = [];
  let checkTimer: NodeJS.Timeout | undefined;
  const { stdin, ...rest } = opts;
  const vm = host.createVm({
    name, kernel, cpus: 1, memBytes: 128 << 20, cmdline: DEFAULT_CMDLINE,
    initrd: withCommand(baseInitrd, argv, stdin),
    consoleOut: (b) => {
      text += Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("latin1");
      if (watchers.length > 0 && !checkTimer) {
        checkTimer = setTimeout(() => {
          checkTimer = undefined;
          for (const w of watchers) w();
        }, 10);
      }
    },
    ...rest,
  });
  const waitFor = (re: RegExp, timeoutMs: number) =>
    new Promise<void>((resolve, reject) => {
      const check = () => {
        if (!re.test(text)) return;
        clearTimeout(timer);
        watchers = watchers.filter((w) => w !== check);
        resolve();
      };
      const timer = setTimeout(() => {
        watchers = watchers.filter((w) => w !== check);
        reject(new Error(`${name}: no ${re} within ${timeoutMs} ms (state ${vm.state}); output:\n${text.slice(-2000)}`));
      }, timeoutMs);
      watchers.push(check);
      check();
    });
  return { vm, output: () => text, waitFor };
}

/** Run time of all of a VM's vCPUs so far, in ns (wall time on a pCPU, as the scheduler accounts it). */
export function runNs(vm: Vm): number {
  return vm.stats().vcpus.reduce((sum, c) => sum + c.runNs, 0);
}

export interface Window {
  wallNs: number;
  /** Per VM, its run time in the window. */
  runNs: number[];
  /** Per VM, run time / wall time: 1 = one pCPU all the time. */
  pcpus: number[];
}

/** Run time each VM got over `ms` of wall time. */
export async function measure(vms: Vm[], ms: number): Promise<Window> {
  const t0 = monoNs();
  const r0 = vms.map(runNs);
  await new Promise((r) => setTimeout(r, ms));
  const wallNs = monoNs() - t0;
  const ran = vms.map((vm, i) => runNs(vm) - r0[i]);
  return { wallNs, runNs: ran, pcpus: ran.map((n) => n / wallNs) };
}

/** `promise`, or a rejection after `ms` (the timer does not outlive it). */
export async function within<T>(promise: Promise<T>, ms: number, what: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([promise, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(what())), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/** Samples a running VM's run time every 100 ms: stats() has no vCPUs once
 *  it stopped, so its last run time is the last sample (100 ms short at most). */
export function trackRunNs(vm: Vm): { last(): number; stop(): void } {
  let last = 0;
  const sample = () => {
    if (vm.state === "running" || vm.state === "paused") last = runNs(vm);
  };
  const timer = setInterval(sample, 100);
  return { last: () => (sample(), last), stop: () => clearInterval(timer) };
}

/** "a 0.52, b 0.49" for assertion messages. */
export function describe(names: string[], values: number[]): string {
  return names.map((n, i) => `${n} ${values[i].toFixed(3)}`).join(", ");
}

const CC = "riscv64-linux-gnu-gcc";
/** Why guest programs cannot be built here, or false when they can. */
export const noCompiler = spawnSync(CC, ["--version"], { stdio: "ignore" }).status !== 0 &&
  `${CC} not installed (npm test installs gcc-riscv64-linux-gnu and libc6-dev-riscv64-cross)`;

/** The static riscv64 binary of src/host/testing/guest/NAME.c (cached in
 *  build/guest/, rebuilt when the source is newer). */
export function guestProgram(name: string): Uint8Array {
  const src = join(root, "src", "host", "testing", "guest", `${name}.c`);
  const dir = join(root, "build", "guest");
  const out = join(dir, name);
  const mtime = (path: string) => (existsSync(path) ? statSync(path).mtimeMs : 0);
  if (mtime(out) <= mtime(src)) {
    mkdirSync(dir, { recursive: true });
    const tmp = `${out}.${process.pid}.tmp`;
    const r = spawnSync(CC, ["-static", "-O2", "-pthread", "-Wall", "-Wextra", "-o", tmp, src], { encoding: "utf8" });
    if (r.status !== 0) throw new Error(`building ${src} failed:\n${r.stderr}`);
    renameSync(tmp, out); // whole or not at all: a concurrent run never sees half a binary
  }
  return new Uint8Array(readFileSync(out));
}

/** The command that runs the program given as the command's stdin. */
export function runStdinProgram(args: string[] = []): string[] {
  return ["sh", "-c", `cp /tsvisor/stdin /tmp/p && chmod +x /tmp/p && exec /tmp/p ${args.join(" ")}`];
}
