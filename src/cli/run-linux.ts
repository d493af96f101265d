// `tsvisor run [-- CMD ARGS...]`: boot a Linux guest on the virt machine.
//
// With no --kernel, the stock Debian kernel and tsvisor's initramfs are pulled
// on first use (images/debian.ts). With a command, the command's argv travels
// in a second cpio archive appended to the initrd (the kernel unpacks
// concatenated archives; images/init.ts is the guest side), and the guest's
// init reports its exit status through the test finisher.

import { availableParallelism } from "node:os";
import { formatJitStats, type JitOptions } from "../jit/jit.js";
import { readFileSync, mkdtempSync, rmSync, existsSync, renameSync, openSync, fstatSync, readSync, closeSync } from "node:fs";
import { tmpdir } from "node:os";
import { isatty } from "node:tty";
import { basename, dirname, join } from "node:path";
import type { OvercommitOptions } from "../memory/manager/memory-manager.js";
import { SwapError } from "../memory/store/errors.js";
import { parseKernelImage, KernelImageError } from "../arch/riscv/boot-image.js";
import { BootLayoutError } from "../arch/riscv/boot.js";
import { Host, HostError, type Vm, type RunEnd } from "../host/host.js";
import { debianImageDir, defaultCacheDir, makeDirectories } from "../images/image-cache.js";
import { SnapshotError } from "../snapshot/state.js";
import {
  MarkerFilter, fastStdinLimit, loadWorkingSet, pruneSnapshots, saveWorkingSet, workingSetPath, commandMessage, fastStartRefusal, imageIdentity, snapshotKey, snapshotPath, waitArchive,
} from "./fast-start.js";
import { commandArchive } from "../images/command-archive.js";
import { HostConsole } from "./host-console.js";
import type { ImageName } from "./system-image.js";
import { VmDevices, checkDeviceSpecs, isDeviceError, parseShareSpec, parseVsockSpec, shareCmdline } from "./vm-devices.js";

export interface LinuxRunOptions {
  /** Boot a system disk built by `image pull NAME` (cli/system-image.ts) through an overlay of its own. */
  image?: ImageName;
  /** Keep that overlay as <cache>/disks/NAME.qcow2 (and boot from it if it exists). */
  diskName?: string;
  kernel?: string;
  initrd?: string;
  append?: string;
  memBytes: number;
  cpus: number;
  stats: boolean;
  /** Binary translation options (false: interpreter only). */
  jit: JitOptions | false;
  timeoutMs?: number;
  /** Run this in the guest and exit with its status; undefined: interactive shell. */
  command?: string[];
  /** `--disk` specs, vda, vdb, ... in order. */
  disks?: string[];
  /** `--net` specs, eth0, eth1, ... in order. */
  nets?: string[];
  /** `--share HOSTDIR:GUESTDIR[,ro]` specs: virtio-fs devices share0, share1, ... mounted by init. */
  shares?: string[];
  /** `--vsock PATH[,cid=N]`: a virtio-vsock device. */
  vsock?: string;
  /** The console init uses: the UART (default) or a virtio console. */
  console?: "ttyS0" | "hvc0";
  /** pCPU worker threads of the embedded host (default: one per host core). */
  pcpus?: number;
  /** The embedded host's frame pool (default 4 GiB); memBytes may be larger. */
  hostMemBytes?: number;
  /** The memory manager's mechanisms; a swap file's path is made here (a
   *  temporary directory removed at exit), whatever `swap.path` says. */
  overcommit?: OvercommitOptions;
  /** A virtio-balloon (default true). */
  balloon?: boolean;
  /** Fast start (cli/fast-start.ts): restore the cached snapshot of the
   *  booted, waiting guest when the run qualifies (default true). */
  snapshot?: boolean;
}

/**
 * A run's system disk (`--image`): its overlay, /dev/vda ahead of the user's
 * --disk, and what a fast start may rely on. `base` is the image's build when
 * the overlay is new on it: the disk then reads as the base does, whichever
 * run made the snapshot, so its key names the base (a kept overlay, changed
 * by earlier runs, boots cold). `renew` makes the overlay new again.
 */
interface SystemDisk {
  spec: string;
  device: string;
  base?: string;
  renew(): void;
}
type GuestRunOptions = LinuxRunOptions & { systemDisk?: SystemDisk };

/** The run's --disk specs behind its system disk. */
const runDisks = (opts: GuestRunOptions): string[] => [...(opts.systemDisk ? [opts.systemDisk.spec] : []), ...(opts.disks ?? [])];

/** How the guest comes up: booted, booted and snapshotted at the wait point, or restored. */
type FastStart = { mode: "create" | "restore"; path: string; message: Uint8Array };

/** A cached snapshot that does not restore (SnapshotError): the run boots cold instead. */
class RestoreFailed extends Error {}

/** Default kernel command line: the UART console, quiet boot, and restart on
 *  panic, which tsvisor turns into an exit with the panic message.
 *  cryptomgr.notests skips the crypto API's self-tests of every algorithm
 *  the kernel registers (Debian builds them in): about half of the boot's
 *  guest instructions in an interpreter (1.41 G -> 0.76 G for `run -- true`),
 *  and they test the kernel's C code, not the virtual machine. */
export const DEFAULT_CMDLINE = "console=ttyS0 quiet panic=-1 cryptomgr.notests=1";

export const EXIT_GUEST_FAILED = 1;
export const EXIT_TIMEOUT = 124;

export class LinuxRunError extends Error {}

/**
 * A kernel or initrd file's bytes, with `append` after them (4-byte aligned,
 * as the initramfs format pads archives) when given; a file that cannot be
 * read is one line ("kernel PATH: no such file"). Appending here, rather than
 * concatenating after, saves a copy of the initrd (15 MB for the stock one)
 * into memory of its own.
 */
export function readInput(path: string, what: string, append?: Uint8Array): Uint8Array {
  try {
    if (!append) {
      const b = readFileSync(path);
      return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
    }
    const fd = openSync(path, "r");
    try {
      const size = fstatSync(fd).size;
      const out = new Uint8Array(archiveOffset(size) + append.length);
      for (let done = 0; done < size; ) {
        const n = readSync(fd, out, done, size - done, done);
        if (n === 0) throw new LinuxRunError(`${what} ${path}: shorter than its size (changed while read)`);
        done += n;
      }
      out.set(append, archiveOffset(size));
      return out;
    } finally {
      closeSync(fd);
    }
  } catch (e) {
    if (e instanceof LinuxRunError) throw e;
    const err = e as NodeJS.ErrnoException;
    const why = err.code === "ENOENT" ? "no such file" : err.code === "EISDIR" ? "is a directory" : err.code === "EACCES" ? "permission denied" : err.message;
    throw new LinuxRunError(`${what} ${path}: ${why}`);
  }
}

/** The kernel and initrd to boot: the user's, else the pulled Debian image. */
async function resolveImage(opts: LinuxRunOptions): Promise<{ kernel: string; initrd: string }> {
  if (opts.kernel !== undefined && opts.initrd !== undefined) return { kernel: opts.kernel, initrd: opts.initrd };
  // The pull's modules (apt, downloads, the initramfs build) load only when a run boots.
  const { pullDebianImage } = await import("../images/debian.js");
  const pulled = await pullDebianImage({ progress: (line) => process.stderr.write(`${line}\n`) });
  return { kernel: opts.kernel ?? pulled.kernelPath, initrd: opts.initrd ?? pulled.initrdPath };
}

/** All of a piped or redirected stdin, for the guest command. */
async function readAllStdin(limit: number): Promise<Uint8Array> {
  const chunks: Buffer[] = [];
  if (readStdinSync(chunks, limit)) return Buffer.concat(chunks);
  let total = chunks.reduce((n, c) => n + c.length, 0);
  for await (const chunk of process.stdin as AsyncIterable<Buffer>) {
    total += chunk.length;
    if (total > limit) throw stdinTooLarge(limit);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

function stdinTooLarge(limit: number): LinuxRunError {
  return new LinuxRunError(`stdin is larger than ${limit >> 20} MiB, the most a guest command takes (a quarter of --mem)`);
}

/**
 * stdin into `chunks` with plain reads, when it is a file, a pipe or
 * /dev/null: the stream took 5 ms to find an empty stdin empty, on the way
 * of every fast start. False when that cannot go on (a socket, a
 * non-blocking pipe with nothing yet, an error): the caller streams the rest.
 */
function readStdinSync(chunks: Buffer[], limit: number): boolean {
  try {
    const st = fstatSync(0);
    if (!st.isFile() && !st.isFIFO() && !st.isCharacterDevice()) return false;
  } catch {
    return false;
  }
  let total = 0;
  for (;;) {
    const buf = Buffer.allocUnsafe(1 << 16);
    let n: number;
    try {
      n = readSync(0, buf, 0, buf.length, null);
    } catch {
      return false; // EAGAIN, or an error the stream will report
    }
    if (n === 0) return true;
    total += n;
    if (total > limit) throw stdinTooLarge(limit);
    chunks.push(buf.subarray(0, n));
  }
}

/** The initrd with the command archive appended (4-byte aligned, as the
 *  initramfs format pads archives). */
export function withCommand(initrd: Uint8Array, argv: string[], stdin: Uint8Array | undefined): Uint8Array {
  return withArchive(initrd, commandArchive(argv, stdin));
}

/** The initrd with another cpio archive appended. */
function withArchive(initrd: Uint8Array, extra: Uint8Array): Uint8Array {
  const out = new Uint8Array(archiveOffset(initrd.length) + extra.length);
  out.set(initrd, 0);
  out.set(extra, archiveOffset(initrd.length));
  return out;
}

/** Where an archive appended to an initrd of `size` bytes starts: the
 *  initramfs format pads archives to 4 bytes (Documentation/driver-api/early-userspace/buffer-format.rst). */
function archiveOffset(size: number): number {
  return size + ((4 - (size % 4)) % 4);
}

export async function runLinux(opts: LinuxRunOptions): Promise<number> {
  if (opts.image !== undefined) return runSystemImage(opts, opts.image);
  return runLinuxGuest(opts);
}

/**
 * `--image debian`: the system disk's qcow2 base behind a new overlay (or the
 * kept one of --disk-name) as /dev/vda, ahead of the user's --disk; init
 * mounts it as the root (`tsvisor.root=`, images/init.ts).
 */
async function runSystemImage(opts: LinuxRunOptions, image: ImageName): Promise<number> {
  checkDeviceSpecs(opts.disks ?? [], opts.nets ?? [], opts.shares ?? [], opts.vsock);
  // Loaded here: a run without --image never needs them.
  const [{ OverlayError, baseBuildId, keptDiskPath, makeOverlay }, { pullDebianSystem }] = await Promise.all([import("./system-image.js"), import("../images/debian-system.js")]);
  const cacheDir = defaultCacheDir();
  const system = await pullDebianSystem({ cacheDir, progress: (line) => process.stderr.write(`${line}\n`) });
  const kept = opts.diskName !== undefined ? keptDiskPath(cacheDir, opts.diskName) : undefined;
  if (kept !== undefined) await makeDirectories(dirname(kept));
  const baseId = baseBuildId(system.manifest);
  let overlay;
  try {
    overlay = makeOverlay(system.diskPath, system.manifest.disk.virtualSize, kept, baseId);
  } catch (e) {
    if (e instanceof OverlayError) throw new LinuxRunError(e.message);
    throw new LinuxRunError(`cannot make the overlay for --image ${image}: ${(e as Error).message}`);
  }
  if (kept !== undefined && !overlay.reused) process.stderr.write(`tsvisor: the disk of this run is kept in ${kept} (--disk-name ${opts.diskName})\n`);
  const systemDisk: SystemDisk = {
    spec: `${overlay.path},format=qcow2`, device: "/dev/vda",
    base: kept === undefined ? baseId : undefined,
    renew: () => overlay.renew(),
  };
  try {
    return await runLinuxGuest({ ...opts, systemDisk, snapshot: kept === undefined && opts.snapshot });
  } finally {
    overlay.dispose();
  }
}

async function runLinuxGuest(opts: GuestRunOptions): Promise<number> {
  checkDeviceSpecs(opts.disks ?? [], opts.nets ?? [], opts.shares ?? [], opts.vsock);
  const interactive = opts.command === undefined;
  // A command gets a piped or redirected stdin as a file (images/init.ts says why).
  const stdinAsFile = !interactive && !isatty(0);
  const stdin = stdinAsFile ? await readAllStdin(opts.memBytes / 4) : undefined;
  const fast = opts.snapshot !== false && fastStartRefusal(opts) === undefined && (stdin?.length ?? 0) <= fastStdinLimit(opts.console ?? "ttyS0");
  if (fast) {
    const message = () => commandMessage(opts.command!, stdin, Date.now(), { systemDisk: opts.systemDisk !== undefined, shares: (opts.shares ?? []).map(parseShareSpec) });
    const cacheDir = defaultCacheDir();
    const imageDir = debianImageDir(cacheDir);
    const identity = imageIdentity(imageDir);
    if (identity !== undefined) {
      const path = snapshotPath(cacheDir, snapshotKey(identity, fastShape(opts)));
      if (existsSync(path)) {
        try {
          return await bootAndRun(opts, interactive, stdinAsFile, stdin, { mode: "restore", path, message: message() });
        } catch (e) {
          if (!(e instanceof RestoreFailed)) throw e;
          // The failed guest may have written to the system disk: the cold boot gets a new overlay.
          opts.systemDisk?.renew();
          rmSync(path, { force: true });
          rmSync(workingSetPath(path), { force: true });
          process.stderr.write(`tsvisor: the fast-start snapshot ${path} does not restore (${e.message}); removed, booting cold\n`);
        }
      }
    }
    // Boot with the wait archive and snapshot the waiting guest on the way.
    const image = await resolveImage(opts);
    const checked = imageIdentity(imageDir);
    if (checked !== undefined && image.initrd === join(imageDir, "initramfs.cpio")) {
      const path = snapshotPath(cacheDir, snapshotKey(checked, fastShape(opts)));
      return bootAndRun(opts, interactive, stdinAsFile, stdin, { mode: "create", path, message: message() }, image);
    }
  }
  return bootAndRun(opts, interactive, stdinAsFile, stdin, undefined);
}

/** The kernel command line a run boots with (`fast`: the guest of a fast-start snapshot, which mounts the shares only once it has its command, and its system disk read-only). */
function runCmdline(opts: GuestRunOptions, interactive: boolean, dhcp: string[], fast = false): string {
  let cmdline = opts.append ?? (interactive && process.env.TERM ? `${DEFAULT_CMDLINE} TERM=${process.env.TERM}` : DEFAULT_CMDLINE);
  // The kernel keeps printing on ttyS0 (hvc0 exists only once the virtio
  // modules are loaded); init moves the shell or command to hvc0 (images/init.ts).
  if (opts.console === "hvc0") cmdline += " tsvisor.console=hvc0";
  // init brings the user-mode network's cards up by DHCP (images/init.ts);
  // a user's own --append keeps the guest's network as the user sets it.
  if (dhcp.length > 0 && opts.append === undefined) cmdline += ` tsvisor.dhcp=${dhcp.join(",")}`;
  // init mounts the system disk and runs the command in it, or switches to its systemd.
  if (opts.systemDisk !== undefined) cmdline += ` tsvisor.root=${opts.systemDisk.device}${fast ? ",ro" : ""}`;
  // Shared folders are mounted by init (images/init.ts), with --append too: the user asked for them.
  const shares = (opts.shares ?? []).map(parseShareSpec);
  if (shares.length > 0 && !fast) cmdline += ` tsvisor.share=${shareCmdline(shares)}`;
  return cmdline;
}

/** What the cache key takes from a qualifying run (the only card is user-mode NAT, eth0, which answers DHCP). */
function fastShape(opts: GuestRunOptions) {
  const nets = opts.nets ?? [];
  return {
    cmdline: runCmdline(opts, false, nets.length > 0 ? ["eth0"] : [], true), cpus: opts.cpus, memBytes: opts.memBytes,
    console: opts.console ?? "ttyS0", nets, balloon: opts.balloon !== false,
    // With --vsock the snapshot holds the device (a restore resets its connections: there are none yet).
    vsockCid: opts.vsock === undefined ? undefined : parseVsockSpec(opts.vsock).cid,
    shares: (opts.shares ?? []).length,
    system: opts.systemDisk?.base,
  };
}

async function bootAndRun(
  opts: GuestRunOptions, interactive: boolean, stdinAsFile: boolean, stdin: Uint8Array | undefined, fast: FastStart | undefined,
  resolved?: { kernel: string; initrd: string },
): Promise<number> {
  let kernel: ReturnType<typeof parseKernelImage> | undefined;
  let initrd: Uint8Array | undefined;
  if (fast?.mode !== "restore") {
    const image = resolved ?? await resolveImage(opts);
    try {
      kernel = parseKernelImage(readInput(image.kernel, "kernel"));
    } catch (e) {
      if (e instanceof KernelImageError) throw new LinuxRunError(`kernel ${image.kernel}: ${e.message}`);
      throw e;
    }
    initrd = readInput(image.initrd, "initrd", fast ? waitArchive() : opts.command ? commandArchive(opts.command, stdin) : undefined);
  }

  let devices: VmDevices;
  try {
    devices = await VmDevices.open(runDisks(opts), opts.nets ?? [], (line) => warnLine(line, interactive), undefined, { shares: opts.shares, vsock: opts.vsock });
  } catch (e) {
    if (isDeviceError(e)) throw new LinuxRunError(e.message);
    throw e;
  }
  const cmdline = runCmdline(opts, interactive, devices.dhcpInterfaces(), fast !== undefined);
  try {
    return await runVm(opts, kernel, initrd, cmdline, devices, interactive, stdinAsFile, fast);
  } finally {
    // Disks are flushed here, on every way out (a qcow2 image writes back
    // its refcounts), so an ended run leaves a clean image.
    await devices.close();
  }
}

async function runVm(
  opts: LinuxRunOptions, kernel: ReturnType<typeof parseKernelImage> | undefined, initrd: Uint8Array | undefined, cmdline: string,
  devices: VmDevices, interactive: boolean, stdinAsFile: boolean, fast: FastStart | undefined,
): Promise<number> {
  // An embedded host with one VM: the same engine `tsvisor host` runs many on.
  let stopRun: ((reason: string) => void) | undefined;
  let vm: Vm | undefined;
  const host = new HostConsole({ interactive, forwardStdin: !stdinAsFile }, {
    quit: () => stopRun?.("quit"),
    inputReady: () => setImmediate(() => vm?.vmm?.afterExit()),
  });
  const onSignal = (signal: NodeJS.Signals) => stopRun?.(signal);
  for (const s of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.on(s, onSignal);
  const hostStopped = new Promise<string>((resolve) => (stopRun = resolve));
  const timer = opts.timeoutMs !== undefined ? setTimeout(() => stopRun?.("timeout"), opts.timeoutMs) : undefined;
  // One worker per vCPU, at most one per host core: a second worker for a
  // lone vCPU only adds a translation cache it wanders into (bench:boot:
  // 18 % slower with two workers than with one).
  let swapDir: string | undefined;
  let engine: Host;
  try {
    let overcommit = opts.overcommit;
    if (overcommit?.swap) {
      swapDir = mkdtempSync(join(tmpdir(), "tsvisor-swap-"));
      overcommit = { ...overcommit, swap: { ...overcommit.swap, path: join(swapDir, "swap") } };
    }
    engine = await Host.create({ pcpus: opts.pcpus ?? Math.min(availableParallelism(), opts.cpus), memLimitBytes: opts.hostMemBytes, overcommit, exitsWithVms: true });
  } catch (e) {
    if (swapDir) rmSync(swapDir, { recursive: true, force: true });
    host.detach();
    if (timer) clearTimeout(timer);
    for (const s of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.off(s, onSignal);
    if (e instanceof HostError || e instanceof SwapError || e instanceof RangeError) throw new LinuxRunError(e.message);
    throw e;
  }

  try {
    const common = {
      name: "run", jit: opts.jit,
      virtio: devices.devices,
      // virtio-console negotiates its size feature at boot only: a fast-start
      // snapshot's console always has a size (the terminal's, else 80x24),
      // so a run restored under a terminal can give the guest its own.
      consoleSize: terminalSize() ?? (fast ? FALLBACK_CONSOLE_SIZE : undefined),
      warn: (m: string) => warnLine(m, interactive),
      ...(opts.balloon === false ? { balloon: false as const } : {}),
    };
    let outputSeen = false;
    if (fast?.mode === "restore") {
      const t0 = performance.now();
      try {
        const pages = loadWorkingSet(fast.path);
        const path = fast.path;
        vm = engine.restoreVm(path, {
          ...common, jit: restoredJit(opts.jit), paused: true,
          workingSet: { pages, record: pages ? undefined : (read) => saveWorkingSet(path, read) },
          consoleOut: (b) => {
            outputSeen = true;
            host.output(b);
          },
        });
      } catch (e) {
        if (e instanceof SnapshotError) throw new RestoreFailed(e.message);
        throw e;
      }
      const size = terminalSize();
      if (size) vm.vmm!.consoleResize(size.cols, size.rows);
      // The waiting guest reads its command first (fast-start.ts), then whatever stdin forwards.
      vm.vmm!.consoleInput(fast.message);
      vm.resume();
      if (opts.stats) process.stderr.write(`fast start: restored ${fast.path} in ${(performance.now() - t0).toFixed(1)} ms\n`);
    } else {
      let consoleOut = (b: Uint8Array) => host.output(b);
      if (fast) {
        const snap = fast;
        const filter = new MarkerFilter(consoleOut, () => setImmediate(() => {
          void snapshotWaiting(vm!, snap, opts.stats, (m) => warnLine(m, interactive)).then(() => {
            if (vm?.vmm) host.attach(vm.vmm);
          });
        }));
        consoleOut = (b) => filter.write(b);
      }
      vm = createRunVm(engine, { ...common, memBytes: opts.memBytes, cpus: opts.cpus, kernel, initrd, cmdline, console: opts.console, consoleOut });
    }
    for (;;) {
      try {
        vm.start();
      } catch (e) {
        if (e instanceof BootLayoutError) throw new LinuxRunError(e.message);
        throw e;
      }
      const machine = vm.vmm!;
      // A terminal's input is forwarded once the waiting guest has its command
      // (snapshotWaiting), not before: the wait would read it as the command.
      if (fast?.mode !== "create") host.attach(machine);
      const onResize = () => {
        const size = terminalSize();
        if (size) vm?.vmm?.consoleResize(size.cols, size.rows);
      };
      process.stdout.on("resize", onResize);
      const outcome = await Promise.race([
        vm.waitForEnd().then((end) => ({ kind: "guest" as const, end })),
        hostStopped.then((reason) => ({ kind: "host" as const, reason })),
      ]).finally(() => process.stdout.off("resize", onResize));
      if (outcome.kind === "host") await vm.stop(outcome.reason);
      host.flush();
      if (opts.stats) {
        const jit = await vm.jitStats();
        const net = devices.netStatsLines().map((l) => `${l}\n`).join("");
        process.stderr.write(`${vm.exitStats().format()}\n${machine.virtioStats()}\n${net}${jit ? formatJitStats(jit) + "\n" : ""}`);
      }
      if (outcome.kind === "host") return hostEnd(outcome.reason, opts);
      if (fast?.mode === "restore" && outcome.end.kind === "error" && outcome.end.message.includes(fast.path)) {
        // A page of the snapshot did not check out when the guest touched it
        // (memory is read lazily). Before any output the command cannot have
        // done much: boot cold instead; after, the run failed and says why.
        if (!outputSeen) throw new RestoreFailed(outcome.end.message);
        rmSync(fast.path, { force: true });
        rmSync(workingSetPath(fast.path), { force: true });
        process.stderr.write(`tsvisor: ${outcome.end.message}; the fast-start snapshot is removed, the next run boots cold\n`);
        return EXIT_GUEST_FAILED;
      }
      const status = guestEnd(outcome.end, interactive);
      if (status !== undefined) return status;
      // An interactive guest that rebooted boots again, as on a real machine.
      process.stderr.write("\r\ntsvisor: guest rebooted\r\n");
    }
  } finally {
    if (timer) clearTimeout(timer);
    for (const s of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.off(s, onSignal);
    host.detach();
    await engine.close();
    if (swapDir) rmSync(swapDir, { recursive: true, force: true });
  }
}

/**
 * The guest booted for a fast-start snapshot waits for its command: write
 * the snapshot (the VM stays paused meanwhile), then type the command. A
 * snapshot that cannot be written is one warning; the command runs anyway.
 */
async function snapshotWaiting(vm: Vm, fast: FastStart, stats: boolean, warn: (m: string) => void): Promise<void> {
  const t0 = performance.now();
  try {
    await makeDirectories(dirname(fast.path));
    // Written under this process's own name, then renamed: two first runs at once do not mix their files.
    const own = `${fast.path}.${process.pid}`;
    const written = await vm.snapshot(own, { stayPaused: true });
    renameSync(own, fast.path);
    rmSync(workingSetPath(fast.path), { force: true }); // another snapshot's
    pruneSnapshots(dirname(fast.path), basename(fast.path, ".snap"));
    if (stats) process.stderr.write(`fast start: booted; snapshot ${fast.path} written (${(written.bytes / 2 ** 20).toFixed(0)} MiB) in ${(performance.now() - t0).toFixed(0)} ms\n`);
  } catch (e) {
    rmSync(`${fast.path}.${process.pid}.partial`, { force: true });
    rmSync(`${fast.path}.${process.pid}`, { force: true });
    warn(`could not write the fast-start snapshot ${fast.path}: ${(e as Error).message}`);
  }
  if (vm.state !== "paused" && vm.state !== "running") return;
  vm.vmm?.consoleInput(fast.message);
  if (vm.state === "paused") vm.resume();
  setImmediate(() => vm.vmm?.afterExit());
}

/**
 * A restored guest starts with an empty translation cache and typically runs
 * a short command: with the boot's threshold (2000 entries) the JIT spends
 * more on compiling than it saves (\`run -- true\` restored: 1.4 s of CPU
 * against 0.7 s with the interpreter alone). Ten times that still translates
 * the hot loops of a long command (a 300k-iteration shell loop ran as fast).
 * An explicit --jit-threshold is kept.
 */
export const RESTORED_JIT_THRESHOLD = 10_000;

function restoredJit(jit: JitOptions | false): JitOptions | false {
  return jit && jit.threshold === undefined ? { ...jit, threshold: RESTORED_JIT_THRESHOLD } : jit;
}

/** The VM; a configuration the engine refuses (memory too large for the pool) is one line. */
function createRunVm(engine: Host, config: Parameters<Host["createVm"]>[0]): Vm {
  try {
    return engine.createVm(config);
  } catch (e) {
    if (e instanceof HostError) throw new LinuxRunError(e.message);
    throw e;
  }
}

/** A warning while the guest runs; a terminal in raw mode needs its own CR. */
function warnLine(message: string, interactive: boolean): void {
  process.stderr.write(interactive ? `\r\ntsvisor: ${message}\r\n` : `tsvisor: ${message}\n`);
}

/** A console's size when there is no terminal to take it from. */
const FALLBACK_CONSOLE_SIZE = { cols: 80, rows: 24 };

/** The size of the terminal tsvisor writes to, if it writes to one. */
function terminalSize(): { cols: number; rows: number } | undefined {
  const out = process.stdout;
  return out.isTTY && out.columns > 0 && out.rows > 0 ? { cols: out.columns, rows: out.rows } : undefined;
}

/** Exit status for a guest-side end; undefined to boot again (reboot). */
function guestEnd(end: RunEnd, interactive: boolean): number | undefined {
  switch (end.kind) {
    case "error":
      process.stderr.write(`tsvisor: ${end.message}\n`);
      return EXIT_GUEST_FAILED;
    case "stopped":
      process.stderr.write(`tsvisor: ${end.reason}\n`);
      return EXIT_GUEST_FAILED;
    case "poweroff":
      return 0;
    case "exit-status":
      return end.code > 255 ? 255 : end.code;
    case "panic":
      process.stderr.write(`tsvisor: guest kernel panic: ${end.message}\n`);
      return EXIT_GUEST_FAILED;
    case "reboot":
      if (interactive) return undefined;
      process.stderr.write("tsvisor: the guest rebooted before the command finished\n");
      return EXIT_GUEST_FAILED;
  }
}

function hostEnd(reason: string, opts: LinuxRunOptions): number {
  if (reason === "quit") return 0;
  if (reason === "timeout") {
    process.stderr.write(`\ntsvisor: timeout (${(opts.timeoutMs ?? 0) / 1000} s) reached\n`);
    return EXIT_TIMEOUT;
  }
  const signals: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGTERM: 15 };
  return 128 + (signals[reason] ?? 0);
}
