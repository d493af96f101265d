// The `tsvisor` command.
//
// Exit status: the guest program's exit code; 124 when --max-insns or --timeout
// ended the run; 2 for usage errors; 1 for any other error. Errors are one line
// on stderr, never a stack trace.

import { UsageError } from "./size.js";
import { OutputClosed } from "./console-output.js";
import { VERSION } from "./version.js";
import type { EarlyStart } from "./launch.js";

const EXIT_ERROR = 1;
const EXIT_USAGE = 2;

/** The usage text; its parts come from the commands' modules, loaded only for it. */
async function helpText(): Promise<string> {
  const [{ DISK_HELP }, { VM_HELP }, { DEFAULT_CMDLINE }, { DEFAULT_THRESHOLD }, { VIRT_MAX_HARTS }] = await Promise.all([
    import("./disk.js"), import("../api/vm-cli.js"), import("./run-linux.js"), import("../jit/jit.js"), import("../arch/riscv/layout.js"),
  ]);
  return `usage: tsvisor <command> [options]

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
                          repeatable)
  --vsock PATH[,cid=N]    a virtio-vsock device (guest CID N, default 3), Firecracker's
                          convention: a host program connects to the Unix socket PATH
                          and writes "CONNECT PORT\\n" to reach guest port PORT (answer
                          "OK HOSTPORT\\n"); the guest connecting to CID 2 port P reaches
                          the Unix socket PATH_P
  -p HOSTPORT:GUESTPORT   forward a TCP port of the host's 127.0.0.1 into the guest
                          (through the first user-mode network; repeatable)
  --console ttyS0|hvc0    the console of the guest's shell or command: the 16550
                          UART or virtio-console, which moves output in batches
                          (default: hvc0 for run -- CMD, ttyS0 otherwise)
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
}

function fail(message: string, status: number): never {
  process.stderr.write(`tsvisor: ${message}\n`);
  process.exit(status);
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
  // The guest's console output is written from the VM's exit handling, so
  // a closed pipe can surface there rather than in main's try.
  process.on("uncaughtException", (e) => (e instanceof OutputClosed ? process.exit(141) : fail(`internal error: ${e instanceof Error ? e.message : String(e)}`, EXIT_ERROR)));
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
    const [{ checkImageName }, { pullDebianSystem }] = await Promise.all([import("./system-image.js"), import("../images/debian-system.js")]);
    checkImageName(name, "image pull");
    const t0 = performance.now();
    const sys = await pullDebianSystem({ force, progress: (line) => process.stderr.write(`${line}\n`) });
    const took = sys.fromCache ? "cached" : `built in ${((performance.now() - t0) / 1000).toFixed(0)} s`;
    process.stdout.write(`debian ${sys.manifest.source.suite} riscv64, ${sys.manifest.packages.length} packages (${took})\n  ${sys.diskPath}\n`);
    return 0;
  }
  const { pullDebianImage } = await import("../images/debian.js");
  const r = await pullDebianImage({ force, progress: (line) => process.stderr.write(`${line}\n`) });
  process.stdout.write(`kernel ${r.kernelVersion}\n  ${r.kernelPath}\n  ${r.initrdPath}\n`);
  return 0;
}

/** `tsvisor COMMAND --help`: the usage lines of that command from HELP
 *  (and, for run, its options), so there is one text to keep true. */
function commandHelp(help: string, command: string): string {
  const lines = help.split("\n");
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

type ErrorClass = abstract new (...args: never[]) => Error;

/** A command: its function, and the errors it ends with as one line (status 1). */
interface Command {
  run(argv: string[]): number | Promise<number>;
  errors: readonly ErrorClass[];
}

/** Each command's modules are loaded when it runs, not before: every module
 *  costs the CLI's start (fast start's \`run -- true\` was mostly Node
 *  loading the modules of commands it did not run). */
const commands: Record<string, (argv: string[], early: EarlyStart) => Promise<Command>> = {
  run: async (_argv, early) => {
    // The pCPU worker a Linux guest runs on, started by the launcher before
    // this code was loaded (host/pcpu-prestart.ts), goes to the run's host.
    if (early.pcpus.length > 0) (await import("../host/pcpu-pool.js")).adoptPrestartedPcpus(early.pcpus);
    const { runCommand, ONE_LINE_ERRORS } = await import("./run-command.js");
    return { run: runCommand, errors: ONE_LINE_ERRORS };
  },
  // A system image is built by running a guest: a run's errors, and the image's.
  image: async () => ({ run: imageCommand, errors: (await import("./run-command.js")).ONE_LINE_ERRORS }),
  disk: async () => ({ run: (await import("./disk.js")).diskCommand, errors: [] }),
  host: async () => apiCommand("host"),
  vm: async () => apiCommand("vm"),
};

/** \`host\` and \`vm\`: the daemon runs guests, and the client reaches it. */
async function apiCommand(which: "host" | "vm"): Promise<Command> {
  const [cli, client, server, run] = await Promise.all([
    import("../api/vm-cli.js"), import("../api/client.js"), import("../api/server.js"), import("./run-command.js"),
  ]);
  return {
    run: which === "host" ? cli.hostCommand : cli.vmCommand,
    errors: [...run.ONE_LINE_ERRORS, client.HostUnreachable, client.ApiFailure, server.DaemonError],
  };
}

/** The command line `argv`; `early`: what cli/launch.ts started for it. */
export async function main(argv: string[], early: EarlyStart = { pcpus: [] }): Promise<void> {
  installTopLevelHandlers();
  let oneLineErrors: readonly ErrorClass[] = [];
  try {
    const [command, ...rest] = argv;
    if (command === undefined || command === "-h" || command === "--help" || command === "help") {
      process.stdout.write(await helpText());
      process.exitCode = command === undefined ? EXIT_USAGE : 0;
      return;
    }
    if (command === "-V" || command === "--version") {
      process.stdout.write(`tsvisor ${VERSION}\n`);
      return;
    }
    if (!Object.hasOwn(commands, command)) throw new UsageError(`unknown command '${command}' (try --help)`);
    if (rest[0] === "--help" || rest[0] === "-h") {
      process.stdout.write(commandHelp(await helpText(), command));
      return;
    }
    const { run, errors } = await commands[command](rest, early);
    oneLineErrors = errors;
    const status = await run(rest);
    // Output went out synchronously; exit now rather than wait for stdin,
    // which may still be open, to end.
    process.exit(status);
  } catch (e) {
    if (e instanceof OutputClosed) process.exit(141); // see installTopLevelHandlers
    if (e instanceof UsageError) fail(e.message, EXIT_USAGE);
    if (e instanceof Error && oneLineErrors.some((c) => e instanceof c)) fail(e.message, EXIT_ERROR);
    // vcpu/core.ts CoreBuildMismatch, by name: importing the core's loader
    // here would load it for every command.
    if (e instanceof Error && e.name === "CoreBuildMismatch") fail(e.message, EXIT_ERROR);
    const msg = e instanceof Error ? e.message : String(e);
    fail(`internal error: ${msg}`, EXIT_ERROR);
  }
}
