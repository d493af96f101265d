// `tsvisor run`: its options, then a Linux guest (run-linux.ts) or a
// bare-metal one. Loaded by main.ts only for `run` (every module a command
// does not need costs the CLI's start: fast start's `run -- true` is mostly
// Node loading modules).

import { parseArgs } from "node:util";
import { readFileSync } from "node:fs";
import { parseElf, ElfError, type ElfImage } from "../loader/elf.js";
import { BareMachine, MachineError } from "../vmm/bare-machine.js";
import { demoImage } from "../vmm/demo.js";
import { GuestFault } from "../vcpu/vcpu.js";
import { P2mFault } from "../memory/p2m.js";
import { OutOfHostMemory } from "../memory/frame-pool.js";
import { UsageError, parseSize, parseCount, parseSeconds } from "./size.js";
import { writeAllSync } from "./console-output.js";
import { runLinux, LinuxRunError } from "./run-linux.js";
import { resolveNetSpecs } from "./vm-devices.js";
import { OVERCOMMIT_OPTIONS, overcommitOptions, parsePoolSize } from "./memory-flags.js";
import { VIRT_MAX_HARTS } from "../arch/riscv/layout.js";
import { checkDiskName, checkImageName } from "./system-image.js";
import { ImageError } from "../images/errors.js";
import { parseJitFlags, JitFlagError, formatJitStats, type JitOptions } from "../jit/jit.js";

const EXIT_LIMIT = 124; // as timeout(1)

/** The errors of a run that are one line on stderr (status 1), not an internal error. */
export const ONE_LINE_ERRORS = [ElfError, MachineError, GuestFault, P2mFault, OutOfHostMemory, LinuxRunError, ImageError];

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

export async function runCommand(argv: string[]): Promise<number> {
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
      // A command's output goes faster through virtio-console (batches) than
      // through the UART (an exit per byte): 2.8 s against 1.3 s for 100 kB.
      console: v.console !== undefined ? parseConsole(v.console) : command !== undefined && image === undefined ? "hvc0" : "ttyS0",
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

