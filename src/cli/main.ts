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

const VERSION = "0.1.0";
const EXIT_ERROR = 1;
const EXIT_USAGE = 2;
const EXIT_LIMIT = 124; // as timeout(1)

const HELP = `usage: tsvisor <command> [options]

commands:
  run --bare FILE.elf     run a bare-metal RV64 ELF in M-mode (HTIF console and exit code)
  run --demo              run the bundled bare-metal demo guest
  run                     boot the default Linux guest (not implemented yet)

options for run:
  --mem SIZE              guest RAM, e.g. 256M, 1G (default 256M)
  --max-insns N           stop after N guest instructions (exit status 124)
  --timeout SECONDS       stop after this much wall-clock time (exit status 124)
  --stats                 print VM-exit counts and instructions executed at exit

  -h, --help              this text
  -V, --version           the version
`;

function fail(message: string, status: number): never {
  process.stderr.write(`tsvisor: ${message}\n`);
  process.exit(status);
}

function runCommand(argv: string[]): number {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        bare: { type: "boolean" },
        demo: { type: "boolean" },
        mem: { type: "string" },
        "max-insns": { type: "string" },
        timeout: { type: "string" },
        stats: { type: "boolean" },
      },
    });
  } catch (e) {
    // Node's messages go on with advice about "--"; the first sentence says it.
    throw new UsageError((e as Error).message.split(/\.\s/)[0]);
  }
  const { values: v, positionals } = parsed;
  const memBytes = v.mem !== undefined ? parseSize("--mem", v.mem) : 256 << 20;
  const maxInsns = v["max-insns"] !== undefined ? parseCount("--max-insns", v["max-insns"]) : undefined;
  const timeoutMs = v.timeout !== undefined ? parseSeconds("--timeout", v.timeout) * 1000 : undefined;

  let image: ElfImage;
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
  } else {
    fail("booting Linux is not implemented yet (issue 3); use `tsvisor run --bare FILE.elf` or `tsvisor run --demo`", EXIT_ERROR);
  }

  const machine = new BareMachine(image, {
    memBytes,
    maxInsns,
    timeoutMs,
    console: (b) => writeAllSync(1, b),
  });
  const result = machine.run();
  if (v.stats) process.stderr.write(machine.vcpu.stats.format() + "\n");
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

export function main(argv: string[]): void {
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
    if (command !== "run") throw new UsageError(`unknown command '${command}' (try --help)`);
    const status = runCommand(rest);
    // Let stdout drain before exiting with the guest's status.
    process.exitCode = status;
  } catch (e) {
    if (e instanceof OutputClosed) process.exit(141); // see installTopLevelHandlers
    if (e instanceof UsageError) fail(e.message, EXIT_USAGE);
    if (e instanceof ElfError || e instanceof MachineError || e instanceof GuestFault || e instanceof P2mFault || e instanceof OutOfHostMemory) {
      fail(e.message, EXIT_ERROR);
    }
    const msg = e instanceof Error ? e.message : String(e);
    fail(`internal error: ${msg}`, EXIT_ERROR);
  }
}
