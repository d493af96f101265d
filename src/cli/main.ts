// The `tsvisor` command.
//
// Exit status: the guest program's exit code; 124 when --max-insns or --timeout
// ended the run; 2 for usage errors; 1 for any other error. Errors are one line
// on stderr, never a stack trace.

import { parseArgs } from "node:util";
import { readFileSync } from "node:fs";
import { parseElf, ElfError, type ElfImage } from "../loader/elf.js";
import { BareMachine, MachineError } from "../vmm/bare-machine.js";
import { demoImage } from "../vmm/demo.js";
import { GuestFault } from "../vcpu/vcpu.js";
import { P2mFault } from "../memory/p2m.js";
import { OutOfHostMemory } from "../memory/frame-pool.js";
import { UsageError, parseSize, parseCount, parseSeconds } from "./size.js";
import { writeAllSync, OutputClosed } from "./console-output.js";
import { runLinux, LinuxRunError, DEFAULT_CMDLINE } from "./run-linux.js";
import { resolveNetSpecs } from "./vm-devices.js";
import { OVERCOMMIT_OPTIONS, overcommitOptions, parsePoolSize } from "./memory-flags.js";
import { VIRT_MAX_HARTS } from "../arch/riscv/layout.js";
import { pullDebianImage } from "../images/debian.js";
import { checkDiskName, checkImageName } from "./system-image.js";
import { pullDebianSystem } from "../images/debian-system.js";
import { ImageError } from "../images/errors.js";
import { diskCommand, DISK_HELP } from "./disk.js";
import { hostCommand, vmCommand, VM_HELP } from "../api/vm-cli.js";
import { HostUnreachable, ApiFailure } from "../api/client.js";
import { DaemonError } from "../api/server.js";
import { parseJitFlags, JitFlagError, formatJitStats, DEFAULT_THRESHOLD, type JitOptions } from "../jit/jit.js";

import { VERSION } from "./version.js";
const EXIT_ERROR = 1;
const EXIT_USAGE = 2;
const EXIT_LIMIT = 124; // as timeout(1)

const HELP = `usage: tsvisor <command> [options]

commands:
  run                     boot Debian's stock riscv64 kernel to a busybox shell
                          (the image is pulled on first use; Ctrl-A X quits)
  run -- CMD [ARGS...]    boot, run CMD in the guest, exit with its status
  run --bare FILE.elf     run a bare-metal RV64 ELF in M-mode (HTIF console and exit code)
  run --demo              run the bundled bare-metal demo guest
  image pull [--force]    fetch the Debian kernel and build the initramfs now
  image pull debian [--force]
                          build a Debian system on a disk (apt, systemd, bash, ...),
                          a qcow2 base image in the cache, for run --image debian
${DISK_HELP}${VM_HELP}
options for run:
  --image debian          boot the Debian system disk (image pull debian; pulled on
                          first use): systemd to a root shell, or CMD run in it;
                          the run writes to an overlay thrown away at its end
  --disk-name NAME        keep the --image overlay as <cache>/disks/NAME.qcow2 and
                          boot from it again in later runs with the same NAME
  --kernel FILE           a RISC-V Linux Image (also gzip or EFI zboot) instead of Debian's
  --initrd FILE           an initramfs instead of tsvisor's
  --append "ARGS"         kernel command line (default: "${DEFAULT_CMDLINE}")
  --cpus N                harts, 1..${VIRT_MAX_HARTS} (default 1)
  --pcpus N               host worker threads that run them, 1..64 (default: one
                          per vCPU, at most one per host core)
  --mem SIZE              guest RAM, e.g. 256M, 1G (default 512M; 256M with --bare)
  --host-mem SIZE         the embedded host's frame pool, 16M..4G (default 4G);
                          --mem may be larger: the memory manager makes room
  --swap SIZE             a swap file of that size (in a temporary directory,
                          removed at exit; default none)
  --compress SIZE         the compressed page pool (0: off; default 1/8 of the
                          pool, at most 256M)
  --no-sharing            no page sharing (default: identical pages shared)
  --no-balloon            no virtio-balloon device (default: one, which lets the
                          host take free memory back from the guest)
  --max-insns N           bare-metal only: stop after N guest instructions (status 124)
  --timeout SECONDS       stop after this much wall-clock time (exit status 124)
  --disk PATH[,OPTS]      a virtio disk (vda, vdb, ... in order; repeatable); OPTS:
                          format=raw|qcow2 (default: probed), readonly,
                          cache=writeback|writethrough|unsafe (default writeback)
  --net SPEC[,mac=MAC]    a virtio network card (eth0, eth1, ...; repeatable); SPEC:
                          user[,hostfwd=tcp:HOSTPORT:GUESTPORT]... user-mode NAT
                            (the default: 10.0.2.15/24, gateway and host 10.0.2.2,
                            DNS 10.0.2.3; net=, host=, dns=, dhcpstart= change them)
                          switch=NAME[,vlan=ID] a port on the host's virtual switch;
                            ,nat gives the switch a NAT uplink, ,vxlan=VNI,remote=IP
                            a VXLAN tunnel to another host (UDP port 4789),
                            ,bw=RATE,pps=RATE rate limits (bytes/s, frames/s)
                          tap=NAME, socket=listen:PATH, socket=connect:PATH,
                          socket=udp:HOST:PORT,peer=HOST:PORT
                          none: no network card at all
  --share HOSTDIR:GUESTDIR[,ro]
                          a host folder in the guest (virtio-fs, tags share0,
                          share1, ...; init mounts it at GUESTDIR; ,ro: read-only;
                          repeatable). Such a VM cannot be snapshotted
  --vsock PATH[,cid=N]    a virtio-vsock device (guest CID N, default 3), Firecracker's
                          convention: a host program connects to the Unix socket PATH
                          and writes "CONNECT PORT\n" to reach guest port PORT (answer
                          "OK HOSTPORT\n"); the guest connecting to CID 2 port P reaches
                          the Unix socket PATH_P
  -p HOSTPORT:GUESTPORT   forward a TCP port of the host's 127.0.0.1 into the guest
                          (through the first user-mode network; repeatable)
  --console ttyS0|hvc0    the guest shell's console: the 16550 UART (default)
                          or virtio-console, which moves output in batches
  --jit on|off            binary translation of hot guest code to WebAssembly
                          (default on; off: the interpreter runs everything)
  --jit-threshold N       entries into a block before it is translated
                          (default ${DEFAULT_THRESHOLD}; 1 translates before the first run)
  --no-snapshot           boot cold; by default \`run -- CMD\` restores a snapshot of
                          the guest booted and waiting for a command, kept in the
                          image cache (made by the first run; only with the stock
                          image, no --append, --disk or --net but user, no -p)
  --stats                 print VM-exit counts, instructions executed,
                          virtio queue and translation counts at exit

  -h, --help              this text
  -V, --version           the version
`;

function fail(message: string, status: number): never {
  process.stderr.write(`tsvisor: ${message}\n`);
  process.exit(status);
}

function parseRunArgs(argv: string[]) {
  // Everything after "--" is the guest command, never tsvisor's options.
  const dashes = argv.indexOf("--");
  const own = dashes < 0 ? argv : argv.slice(0, dashes);
  const command = dashes < 0 ? undefined : argv.slice(dashes + 1);
  try {
    const parsed = parseArgs({
      args: own,
      allowPositionals: true,
      strict: true,
      options: {
        bare: { type: "boolean" },
        demo: { type: "boolean" },
        kernel: { type: "string" },
        initrd: { type: "string" },
        append: { type: "string" },
        cpus: { type: "string" },
        pcpus: { type: "string" },
        mem: { type: "string" },
        "max-insns": { type: "string" },
        timeout: { type: "string" },
        stats: { type: "boolean" },
        disk: { type: "string", multiple: true },
        net: { type: "string", multiple: true },
        share: { type: "string", multiple: true },
        vsock: { type: "string" },
        publish: { type: "string", short: "p", multiple: true },
        console: { type: "string" },
        jit: { type: "string" },
        "jit-threshold": { type: "string" },
        "host-mem": { type: "string" },
        ...OVERCOMMIT_OPTIONS,
        "no-balloon": { type: "boolean" },
        "no-snapshot": { type: "boolean" },
        image: { type: "string" },
        "disk-name": { type: "string" },
      },
    });
    return { ...parsed, command };
  } catch (e) {
    // Node's messages go on with advice about "--"; the first sentence says it.
    throw new UsageError((e as Error).message.split(/\.\s/)[0]);
  }
}

function parsePcpus(text: string): number {
  if (!/^\d+$/.test(text.trim()) || Number(text) < 1 || Number(text) > 64) throw new UsageError(`--pcpus: expected 1..64, got '${text}'`);
  return Number(text);
}

function parseCpus(text: string): number {
  if (!/^\d+$/.test(text.trim()) || Number(text) < 1 || Number(text) > VIRT_MAX_HARTS) {
    throw new UsageError(`--cpus: expected 1..${VIRT_MAX_HARTS}, got '${text}'`);
  }
  return Number(text);
}

function parseConsole(text: string): "ttyS0" | "hvc0" {
  if (text !== "ttyS0" && text !== "hvc0") throw new UsageError(`--console: expected ttyS0 or hvc0, got '${text}'`);
  return text;
}

async function runCommand(argv: string[]): Promise<number> {
  const { values: v, positionals, command } = parseRunArgs(argv);
  let jit: JitOptions | false;
  try {
    jit = parseJitFlags(v.jit, v["jit-threshold"]);
  } catch (e) {
    if (e instanceof JitFlagError) throw new UsageError(e.message);
    throw e;
  }
  const timeoutMs = v.timeout !== undefined ? parseSeconds("--timeout", v.timeout) * 1000 : undefined;
  if (!v.bare && !v.demo) {
    if (positionals.length > 0) throw new UsageError(`unexpected argument '${positionals[0]}': put the guest command after --`);
    if (v["max-insns"] !== undefined) throw new UsageError("--max-insns applies to --bare and --demo only");
    if (command !== undefined && command.length === 0) throw new UsageError("no command after --");
    const image = v.image !== undefined ? checkImageName(v.image, "--image") : undefined;
    if (v["disk-name"] !== undefined && image === undefined) throw new UsageError("--disk-name applies to --image only");
    if (image !== undefined && (v.kernel !== undefined || v.initrd !== undefined)) throw new UsageError("--image boots Debian's kernel and tsvisor's initramfs: no --kernel or --initrd with it");
    return runLinux({
      image,
      diskName: v["disk-name"] !== undefined ? checkDiskName(v["disk-name"]) : undefined,
      kernel: v.kernel,
      initrd: v.initrd,
      append: v.append,
      memBytes: v.mem !== undefined ? parseSize("--mem", v.mem) : 512 << 20,
      cpus: v.cpus !== undefined ? parseCpus(v.cpus) : 1,
      pcpus: v.pcpus !== undefined ? parsePcpus(v.pcpus) : undefined,
      stats: v.stats ?? false,
      timeoutMs,
      command,
      disks: v.disk ?? [],
      nets: resolveNetSpecs(v.net, v.publish),
      shares: v.share ?? [],
      vsock: v.vsock,
      console: v.console !== undefined ? parseConsole(v.console) : "ttyS0",
      jit,
      hostMemBytes: v["host-mem"] !== undefined ? parsePoolSize("--host-mem", v["host-mem"]) : undefined,
      // The swap file's temporary directory is made by runLinux, once the guest is about to start.
      overcommit: overcommitOptions(v, () => ""),
      balloon: !v["no-balloon"],
      snapshot: !v["no-snapshot"],
    });
  }
  for (const flag of ["image", "disk-name", "kernel", "initrd", "append", "cpus", "pcpus", "disk", "net", "share", "vsock", "publish", "console", "host-mem", "swap", "compress", "no-sharing", "no-balloon", "no-snapshot"] as const) {
    if (v[flag] !== undefined) throw new UsageError(`--${flag} applies to Linux guests, not --bare or --demo`);
  }
  if (command !== undefined) throw new UsageError("a guest command (after --) applies to Linux guests, not --bare or --demo");
  const memBytes = v.mem !== undefined ? parseSize("--mem", v.mem) : 256 << 20;
  const maxInsns = v["max-insns"] !== undefined ? parseCount("--max-insns", v["max-insns"]) : undefined;

  let image: ElfImage | undefined;
  if (v.demo) {
    if (positionals.length > 0) throw new UsageError("run --demo takes no file");
    image = demoImage();
  } else if (v.bare) {
    if (positionals.length !== 1) throw new UsageError("run --bare needs exactly one ELF file");
    let bytes: Buffer;
    try {
      bytes = readFileSync(positionals[0]);
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      const why = err.code === "ENOENT" ? "no such file" : err.code === "EISDIR" ? "is a directory" : err.code === "EACCES" ? "permission denied" : err.message;
      throw new ElfError(`${positionals[0]}: ${why}`);
    }
    try {
      image = parseElf(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength));
    } catch (e) {
      if (e instanceof ElfError) throw new ElfError(`${positionals[0]}: ${e.message}`);
      throw e;
    }
  }

  if (!image) throw new UsageError("run --bare needs exactly one ELF file");
  const machine = new BareMachine(image, {
    memBytes,
    maxInsns,
    timeoutMs,
    console: (b) => writeAllSync(1, b),
    jit,
  });
  const result = machine.run();
  if (v.stats) {
    process.stderr.write(machine.vcpu.stats.format() + "\n");
    if (machine.jit) process.stderr.write(formatJitStats(machine.jit.stats()) + "\n");
  }
  if (result.kind === "limit") {
    const what = result.what === "instructions" ? `instruction limit (${maxInsns}) reached` : `timeout (${v.timeout} s) reached`;
    process.stderr.write(`tsvisor: ${what} at pc 0x${result.pc.toString(16)}\n`);
    return EXIT_LIMIT;
  }
  return result.code;
}

/** Last-resort handlers: whatever goes wrong outside the synchronous run (a
 *  write to a closed pipe, a bug) still ends as one line, not a stack trace. */
function installTopLevelHandlers(): void {
  const quietOnClosedPipe = (e: NodeJS.ErrnoException) => {
    // The reader went away (`tsvisor ... | head`): stop quietly, as a C program
    // killed by SIGPIPE would (status 128 + 13).
    if (e.code === "EPIPE") process.exit(141);
    fail(`cannot write output: ${e.message}`, EXIT_ERROR);
  };
  process.stdout.on("error", quietOnClosedPipe);
  process.stderr.on("error", () => process.exit(141));
  process.on("uncaughtException", (e) => fail(`internal error: ${e instanceof Error ? e.message : String(e)}`, EXIT_ERROR));
  process.on("unhandledRejection", (e) => fail(`internal error: ${e instanceof Error ? e.message : String(e)}`, EXIT_ERROR));
}

async function imageCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub !== "pull") throw new UsageError(sub === undefined ? "image: expected a subcommand: pull" : `image: unknown subcommand '${sub}'`);
  let force = false;
  let name: string | undefined;
  for (const a of rest) {
    if (a === "--force") force = true;
    else if (!a.startsWith("-") && name === undefined) name = a;
    else throw new UsageError(`image pull: unexpected argument '${a}'`);
  }
  if (name !== undefined) {
    checkImageName(name, "image pull");
    const t0 = performance.now();
    const sys = await pullDebianSystem({ force, progress: (line) => process.stderr.write(`${line}\n`) });
    const took = sys.fromCache ? "cached" : `built in ${((performance.now() - t0) / 1000).toFixed(0)} s`;
    process.stdout.write(`debian ${sys.manifest.source.suite} riscv64, ${sys.manifest.packages.length} packages (${took})\n  ${sys.diskPath}\n`);
    return 0;
  }
  const r = await pullDebianImage({ force, progress: (line) => process.stderr.write(`${line}\n`) });
  process.stdout.write(`kernel ${r.kernelVersion}\n  ${r.kernelPath}\n  ${r.initrdPath}\n`);
  return 0;
}

/** `tsvisor COMMAND --help`: the usage lines of that command from HELP
 *  (and, for run, its options), so there is one text to keep true. */
function commandHelp(command: string): string {
  const lines = HELP.split("\n");
  const out: string[] = ["usage:"];
  let inBlock = false;
  let inRunOptions = false;
  for (const line of lines) {
    if (line === "") {
      inBlock = false;
      inRunOptions = false;
      continue;
    }
    if (/^[a-z]/.test(line)) {
      inRunOptions = command === "run" && line === "options for run:";
      if (inRunOptions) out.push("", line);
      continue;
    }
    if (inRunOptions) {
      out.push(line);
      continue;
    }
    // A command's block: its line at two spaces in, then lines indented deeper.
    if (/^ {2}\S/.test(line)) inBlock = line.startsWith(`  ${command} `) || line === `  ${command}`;
    if (inBlock) out.push(line);
  }
  return out.join("\n") + "\n";
}

export async function main(argv: string[]): Promise<void> {
  installTopLevelHandlers();
  try {
    const [command, ...rest] = argv;
    if (command === undefined || command === "-h" || command === "--help" || command === "help") {
      process.stdout.write(HELP);
      process.exitCode = command === undefined ? EXIT_USAGE : 0;
      return;
    }
    if (command === "-V" || command === "--version") {
      process.stdout.write(`tsvisor ${VERSION}\n`);
      return;
    }
    const commands: Record<string, (argv: string[]) => number | Promise<number>> = {
      run: runCommand, image: imageCommand, disk: diskCommand, host: hostCommand, vm: vmCommand,
    };
    if (!Object.hasOwn(commands, command)) throw new UsageError(`unknown command '${command}' (try --help)`);
    if (rest[0] === "--help" || rest[0] === "-h") {
      process.stdout.write(commandHelp(command));
      return;
    }
    const status = await commands[command](rest);
    // Output went out synchronously; exit now rather than wait for stdin,
    // which may still be open, to end.
    process.exit(status);
  } catch (e) {
    if (e instanceof OutputClosed) process.exit(141); // see installTopLevelHandlers
    if (e instanceof UsageError) fail(e.message, EXIT_USAGE);
    if (
      e instanceof ElfError || e instanceof MachineError || e instanceof GuestFault || e instanceof P2mFault ||
      e instanceof OutOfHostMemory || e instanceof LinuxRunError || e instanceof ImageError ||
      e instanceof HostUnreachable || e instanceof ApiFailure || e instanceof DaemonError
    ) {
      fail(e.message, EXIT_ERROR);
    }
    const msg = e instanceof Error ? e.message : String(e);
    fail(`internal error: ${msg}`, EXIT_ERROR);
  }
}
