// The `tsvisor` command as users and the ISA test runner see it: spawned as a
// process, checking exit status and that every error is one `tsvisor: ...`
// line on stderr (never a stack trace). Guest programs are hand-assembled here,
// so these tests need no cross toolchain.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { buildElf, words, type BuildElf } from "../loader/elf-builder.js";
import { buildBareKernel, bareProgram, haveBareCompiler } from "../host/testing/bare-kernel.js";
import { readdirSync, mkdirSync } from "node:fs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const bin = join(root, "bin", "tsvisor.js");
const dir = mkdtempSync(join(tmpdir(), "tsvisor-cli-"));
after(() => rmSync(dir, { recursive: true, force: true }));
const RAM = 0x8000_0000n;

// RV64 encoders (unprivileged spec, "Base Instruction Formats").
const I = (op: number, rd: number, f3: number, rs1: number, imm: number) => (((imm & 0xfff) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op) >>> 0;
const S = (f3: number, rs1: number, rs2: number, imm: number) =>
  ((((imm >> 5) & 0x7f) << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | ((imm & 0x1f) << 7) | 0x23) >>> 0;
const addi = (rd: number, rs1: number, imm: number) => I(0x13, rd, 0, rs1, imm);
const slli = (rd: number, rs1: number, sh: number) => I(0x13, rd, 1, rs1, sh);
const auipc = (rd: number, imm20: number) => ((imm20 << 12) | (rd << 7) | 0x17) >>> 0;
const sd = (rs1: number, rs2: number, imm: number) => S(3, rs1, rs2, imm);
const JSELF = 0x0000006f;
const WFI = 0x10500073;
const [T0, T1] = [5, 6];

const TOHOST = RAM + 0x1000n;
/** A program image with its code at RAM and `tohost` on the next page. */
function program(code: number[], extra: Partial<BuildElf> = {}): string {
  const spec: BuildElf = {
    entry: RAM,
    segments: [
      { paddr: RAM, data: words(...code) },
      { paddr: TOHOST, data: new Uint8Array(16) },
    ],
    symbols: { tohost: TOHOST, fromhost: TOHOST + 8n },
    ...extra,
  };
  return file(buildElf(spec));
}

let files = 0;
function file(bytes: Uint8Array): string {
  const p = join(dir, `t${files++}.elf`);
  writeFileSync(p, bytes);
  return p;
}

function tsvisor(...args: string[]) {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: "utf8", timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Exits with `status` and says exactly one `tsvisor:` line matching `pattern` on stderr. */
function failsWith(r: ReturnType<typeof tsvisor>, status: number, pattern: RegExp) {
  assert.equal(r.status, status, `exit status (stderr: ${r.stderr})`);
  const lines = r.stderr.split("\n").filter((l) => l !== "");
  assert.equal(lines.length, 1, `one line on stderr, got: ${r.stderr}`);
  assert.match(lines[0], /^tsvisor: /);
  assert.match(lines[0], pattern);
  assert.doesNotMatch(r.stderr, /\n\s+at /, "no stack trace");
}

// exit code 7 through HTIF: tohost = (7 << 1) | 1
const EXIT7 = [addi(T0, 0, 15), auipc(T1, 1), sd(T1, T0, -4), JSELF];
// putchar 'A', then exit 0: tohost = 1 << 56 | 1 << 48 | 'A'
const PRINT_A = [
  addi(T0, 0, 0x101), slli(T0, T0, 48), addi(T0, T0, 0x41), auipc(T1, 1), sd(T1, T0, -12),
  addi(T0, 0, 1), sd(T1, T0, -12), JSELF,
];

test("--help, --version and no arguments", () => {
  const help = tsvisor("--help");
  assert.equal(help.status, 0);
  assert.match(help.stdout, /run --bare FILE\.elf/);
  // Every line is a heading or indented under one: a stray newline in an
  // option's text (a "\n" the template literal turned into one) would not be.
  for (const line of help.stdout.split("\n")) {
    if (line !== "" && !line.startsWith(" ")) assert.match(line, /^usage: |:$/, `--help line out of place: ${JSON.stringify(line)}`);
  }
  assert.match(tsvisor("--version").stdout, /^tsvisor \d+\.\d+\.\d+/);
  assert.equal(tsvisor().status, 2);
});

test("COMMAND --help shows that command's usage and exits 0", () => {
  const run = tsvisor("run", "--help");
  assert.equal(run.status, 0, run.stderr);
  assert.match(run.stdout, /options for run:/);
  assert.match(run.stdout, /--host-mem SIZE/);
  assert.doesNotMatch(run.stdout, /disk create/);
  const vm = tsvisor("vm", "-h");
  assert.equal(vm.status, 0);
  assert.match(vm.stdout, /vm set NAME/);
  assert.doesNotMatch(vm.stdout, /options for run:/);
  assert.match(tsvisor("host", "--help").stdout, /--sharing-rate PAGES\/MS/);
});

test("the program's HTIF exit code is the exit status", () => {
  const r = tsvisor("run", "--bare", program(EXIT7));
  assert.equal(r.status, 7, r.stderr);
  assert.equal(r.stderr, "");
});

test("HTIF console output goes to stdout", () => {
  const r = tsvisor("run", "--bare", program(PRINT_A));
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, "A");
});

test("--stats prints instructions and exits by reason on stderr", () => {
  const r = tsvisor("run", "--bare", program(EXIT7), "--stats");
  assert.equal(r.status, 7);
  assert.match(r.stderr, /instructions executed: 3\b/);
  assert.match(r.stderr, /htif\s+1/);
});

test("--jit on|off and --jit-threshold: translation counts in --stats, bad values one line", () => {
  // PRINT_A in a loop would need a branch; PRINT_A once, translated before its first run.
  const on = tsvisor("run", "--bare", program(PRINT_A), "--jit-threshold", "1", "--stats");
  assert.equal(on.status, 0, on.stderr);
  assert.equal(on.stdout, "A");
  assert.match(on.stderr, /translated\s+[1-9]\d* regions/);
  assert.match(on.stderr, / [1-9]\d* instructions retired there/);
  const off = tsvisor("run", "--bare", program(PRINT_A), "--jit", "off", "--stats");
  assert.equal(off.status, 0, off.stderr);
  assert.doesNotMatch(off.stderr, /binary translation/);
  failsWith(tsvisor("run", "--bare", program(EXIT7), "--jit", "maybe"), 2, /--jit: expected on or off, got 'maybe'/);
  failsWith(tsvisor("run", "--bare", program(EXIT7), "--jit-threshold", "0"), 2, /--jit-threshold: expected 1\.\.1000000/);
  failsWith(tsvisor("run", "--bare", program(EXIT7), "--jit", "off", "--jit-threshold", "5"), 2, /needs the JIT on/);
});

test("a trap handler that itself faults through an MMIO exit ends the run, in both engines", () => {
  // mtvec = the handler; the handler loads from address 0, where no device is:
  // an MMIO exit, then an access fault into the same handler, forever.
  const storm = program([auipc(28, 0), addi(28, 28, 16), 0x305e1073 /* csrw mtvec, x28 */, addi(0, 0, 0), I(0x03, 29, 5, 0, 0), JSELF]);
  for (const jit of [["--jit", "off"], ["--jit-threshold", "1"]]) {
    failsWith(tsvisor("run", "--bare", storm, ...jit), 1, /halted: trap handler at 0x80000010/);
  }
});

test("--max-insns ends the run with 124 and says where", () => {
  failsWith(tsvisor("run", "--bare", program([JSELF]), "--max-insns", "1000"), 124, /instruction limit .*1000.* at pc 0x80000000/);
});

test("--timeout ends the run with 124", () => {
  failsWith(tsvisor("run", "--bare", program([JSELF]), "--timeout", "0.2"), 124, /timeout/);
});

test("a hart waiting in WFI that nothing can wake ends with an error", () => {
  failsWith(tsvisor("run", "--bare", program([WFI, JSELF])), 1, /WFI at 0x80000000|interrupt/);
});

test("WFI with the timer compare reached but its interrupt disabled is stuck too, not a spin", () => {
  // mtimecmp = 0 through the CLINT (so mtime >= mtimecmp), mie.MTIE stays clear, then WFI.
  const lui = (rd: number, imm20: number) => ((imm20 << 12) | (rd << 7) | 0x37) >>> 0;
  const p = program([lui(T0, 0x2004), sd(T0, 0, 0), WFI, JSELF]);
  failsWith(tsvisor("run", "--bare", p, "--max-insns", "1000000"), 1, /WFI at 0x80000008|interrupt/);
});

test("the demo runs and greets", () => {
  const r = tsvisor("run", "--demo");
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /Hello/);
  assert.match(r.stdout, /5050/);
});

test("usage errors exit with 2", () => {
  failsWith(tsvisor("run", "--bare", program(EXIT7), "--frobnicate"), 2, /frobnicate/);
  failsWith(tsvisor("run", "--bare"), 2, /ELF file/);
  failsWith(tsvisor("run", "--bare", program(EXIT7), "--mem", "lots"), 2, /--mem/);
  failsWith(tsvisor("run", "--bare", program(EXIT7), "--max-insns", "many"), 2, /--max-insns/);
  failsWith(tsvisor("fly"), 2, /unknown command/);
});

test("a missing file", () => {
  failsWith(tsvisor("run", "--bare", join(dir, "nothere.elf")), 1, /nothere\.elf: no such file/);
});

test("a file that is not ELF", () => {
  failsWith(tsvisor("run", "--bare", file(new TextEncoder().encode("just text\n"))), 1, /not an ELF file/);
});

test("a truncated ELF file", () => {
  const whole = buildElf({ entry: RAM, segments: [{ paddr: RAM, data: words(...EXIT7) }], symbols: { tohost: TOHOST } });
  failsWith(tsvisor("run", "--bare", file(whole.subarray(0, 50))), 1, /truncated/);
  failsWith(tsvisor("run", "--bare", file(whole.subarray(0, 90))), 1, /truncated/);
});

test("an ELF file for another machine", () => {
  failsWith(tsvisor("run", "--bare", program(EXIT7, { machine: 62 })), 1, /not a RISC-V ELF/);
});

test("the host's own /bin/true", { skip: !existsSync("/bin/true") }, () => {
  failsWith(tsvisor("run", "--bare", "/bin/true"), 1, /not a RISC-V ELF|not an executable/);
});

test("overlapping segments", () => {
  const p = program(EXIT7, {
    segments: [
      { paddr: RAM, data: words(...EXIT7) },
      { paddr: RAM + 8n, data: new Uint8Array(16) },
    ],
  });
  failsWith(tsvisor("run", "--bare", p), 1, /overlap/);
});

test("a segment outside RAM", () => {
  const low = program(EXIT7, { segments: [{ paddr: RAM, data: words(...EXIT7) }, { paddr: 0x1000n, data: new Uint8Array(16) }] });
  failsWith(tsvisor("run", "--bare", low), 1, /outside guest RAM/);
  const high = program(EXIT7, { segments: [{ paddr: RAM, data: words(...EXIT7) }, { paddr: RAM + (1n << 20n) - 8n, data: new Uint8Array(16) }] });
  failsWith(tsvisor("run", "--bare", high, "--mem", "1M"), 1, /outside guest RAM/);
});

test("a program without a tohost symbol", () => {
  failsWith(tsvisor("run", "--bare", program(EXIT7, { symbols: { other: RAM } })), 1, /tohost/);
  failsWith(tsvisor("run", "--bare", program(EXIT7, { symbols: undefined })), 1, /tohost/);
});

test("a reader that closes the pipe early ends the run quietly", { skip: !existsSync("/bin/sh") }, () => {
  // The guest prints 'A' forever; `head -c 1` exits after one byte.
  const chatty = program([addi(T0, 0, 0x101), slli(T0, T0, 48), addi(T0, T0, 0x41), auipc(T1, 1), sd(T1, T0, -12), 0xffdff06f /* j -4 */]);
  const r = spawnSync("/bin/sh", ["-c", `"${process.execPath}" "${bin}" run --bare "${chatty}" --timeout 20 | head -c 1`], { encoding: "utf8", timeout: 60_000 });
  assert.equal(r.stdout, "A");
  assert.equal(r.stderr, "", "no stack trace, no message");
});

test("memory flags of run and host: bad values are one line, status 2", () => {
  const elf = program(EXIT7);
  failsWith(tsvisor("run", "--host-mem", "8M"), 2, /--host-mem: the host's pool must be 16M\.\.4G, got '8M'/);
  failsWith(tsvisor("run", "--host-mem", "5G"), 2, /--host-mem: the host's pool must be 16M\.\.4G/);
  failsWith(tsvisor("run", "--swap", "lots"), 2, /--swap: expected a size/);
  failsWith(tsvisor("run", "--swap", "1K"), 2, /--swap: expected 4K\.\./);
  failsWith(tsvisor("run", "--compress", "2K"), 2, /--compress: expected 0 \(off\) or 4K\.\.16G, got '2K'/);
  failsWith(tsvisor("run", "--no-sharing=yes"), 2, /no-sharing/);
  failsWith(tsvisor("run", "--sharing-rate", "1/1"), 2, /sharing-rate/);
  for (const flag of [["--host-mem", "64M"], ["--swap", "16M"], ["--compress", "0"], ["--no-sharing"], ["--no-balloon"]]) {
    failsWith(tsvisor("run", "--bare", elf, ...flag), 2, new RegExp(`${flag[0]} applies to Linux guests`));
  }
  failsWith(tsvisor("host", "--mem", "8M"), 2, /--mem: the host's pool must be 16M\.\.4G/);
  failsWith(tsvisor("host", "--sharing-rate", "2048"), 2, /--sharing-rate: expected PAGES\/MS.*got '2048'/);
  failsWith(tsvisor("host", "--sharing-rate", "0/100"), 2, /--sharing-rate: expected PAGES\/MS/);
  failsWith(tsvisor("host", "--sharing-rate", "2048/100", "--no-sharing"), 2, /--sharing-rate and --no-sharing: choose one/);
  failsWith(tsvisor("host", "--compress", "-1"), 2, /--compress/);
  failsWith(tsvisor("host", "--no-reclaim=1"), 2, /no-reclaim/);
  failsWith(tsvisor("host", "info", "now"), 2, /host info: unexpected argument 'now'/);
  failsWith(tsvisor("vm", "set", "a", "--balloon", "much"), 2, /--balloon: expected a size/);
  failsWith(tsvisor("vm", "create", "a", "--share-group", "x:y"), 2, /--share-group: 1 to 63 letters/);
  const help = tsvisor("--help").stdout;
  for (const flag of ["--host-mem", "--swap", "--compress", "--no-sharing", "--no-balloon", "--sharing-rate", "--no-reclaim", "--share-group", "--balloon SIZE", "host info"]) {
    assert.ok(help.includes(flag), `--help names ${flag}`);
  }
});

test("run --host-mem below --mem, with --swap and --compress: the guest's patterns survive, the swap file's directory is gone at exit",
  { skip: haveBareCompiler() ? false : "needs riscv64-unknown-elf-gcc" }, () => {
    buildBareKernel(bareProgram("patterns"));
    const image = join(root, "build", "bare", "patterns.Image");
    const initrd = join(dir, "tiny.initrd");
    writeFileSync(initrd, "none");
    const tmp = join(dir, "tmp");
    mkdirSync(tmp);
    // patterns.c fills 60 MiB of its 64 MiB with zero, shared, compressible and
    // random pages, waits 3 s, checks them all and powers off; the pool is 32 MiB.
    const r = spawnSync(process.execPath, [bin, "run", "--kernel", image, "--initrd", initrd, "--append", "", "--mem", "64M",
      "--host-mem", "32M", "--swap", "64M", "--compress", "8M", "--pcpus", "1"], { encoding: "utf8", timeout: 120_000, env: { ...process.env, TMPDIR: tmp } });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /done errors=0/);
    for (const line of r.stderr.split("\n").filter((l) => l.trim() !== "")) assert.match(line, /paused: .*it resumes when the host has free memory/);
    assert.deepEqual(readdirSync(tmp), [], "the swap file's temporary directory is removed");
  });
