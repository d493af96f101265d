// `tsvisor run` with Linux guests, as a user runs it: the stock Debian kernel
// (pulled into the user's cache on first use) boots on the virt machine and
// runs commands through tsvisor's init. Each boot takes seconds, so each test
// asks its guest several questions at once.
import { test, before } from "node:test";
import assert from "node:assert/strict";
import { closeSync, mkdtempSync, openSync, readFileSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { HART_ISA_EXTENSIONS } from "../arch/riscv/isa.js";
import { pullDebianImage } from "../images/debian.js";
import { spawnSync } from "node:child_process";
import { tsvisor, oneErrorLine, pullImage, bin, type Run } from "./test-tsvisor.js";

before(pullImage);

test("a command runs in the stock Debian guest: uname, /proc/cpuinfo, arithmetic, ls /, piped stdin", async () => {
  const script = [
    "uname -m",
    "uname -r",
    "grep -m1 '^isa' /proc/cpuinfo",
    "echo sum=$((6 * 7))",
    "ls -1 /", // one per line: the guest's stdout is its serial console, a tty
    "md5sum", // the piped stdin, to its exact end
  ].join("; ");
  // Every byte value, control characters a terminal would act on included.
  const input = Buffer.concat([Buffer.from("line one\r\n\x03\x04\x1a"), Buffer.from([...Array(256).keys()]), Buffer.from("no newline at the end")]);
  const r = await tsvisor(["run", "--", "sh", "-c", script], input);
  assert.equal(r.status, 0, r.stderr);
  const lines = r.stdout.split("\n");
  assert.equal(lines[0], "riscv64");
  assert.match(lines[1], /^\d+\.\d+\.\d+.*-riscv64$/);
  // The kernel's isa line is what it parsed from our device tree: exactly the
  // extensions the core implements, plus the Zc* subsets it derives from C and D.
  const isa = /^isa\s*:\s*(\S+)$/.exec(lines[2]);
  assert.ok(isa, `isa line: ${lines[2]}`);
  const [base, ...multi] = isa[1].split("_");
  assert.match(base, /^rv64/);
  const seen = new Set([...base.slice(4)].concat(multi).filter((e) => !["zca", "zcd", "zcf"].includes(e)));
  assert.deepEqual([...seen].sort(), [...HART_ISA_EXTENSIONS].sort());
  assert.ok(lines.includes("sum=42"), r.stdout);
  for (const dir of ["bin", "dev", "init", "lib", "proc", "sys"]) assert.ok(lines.includes(dir), `ls / shows ${dir}: ${r.stdout}`);
  assert.ok(r.stdout.endsWith(`${createHash("md5").update(input).digest("hex")}  -\n`), r.stdout);
});

test("the command's exit status is tsvisor's, and `uname -a` prints the guest kernel's line", async () => {
  const three = await tsvisor(["run", "--", "sh", "-c", "exit 3"]);
  assert.equal(three.status, 3, three.stderr);
  const uname = await tsvisor(["run", "--", "uname", "-a"]);
  assert.equal(uname.status, 0, uname.stderr);
  assert.match(uname.stdout, /^Linux tsvisor \S+-riscv64 #1 SMP Debian .* riscv64 GNU\/Linux\n$/);
  const missing = await tsvisor(["run", "--", "no-such-command"]);
  assert.equal(missing.status, 127, missing.stderr);
});

test("--cpus 2 boots both harts through SBI HSM; they share work and stay online", async () => {
  // --no-snapshot: the HSM and IPI counts are the boot's (a restored guest makes none).
  const r = await tsvisor(["run", "--no-snapshot", "--cpus", "2", "--stats", "--", "sh", "-c",
    "grep -c ^processor /proc/cpuinfo; cat /sys/devices/system/cpu/online; for c in 0 1; do taskset -c $c sh -c \"echo ran on \\$(cut -d' ' -f39 /proc/self/stat)\"; done"]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, "2\n0-1\nran on 0\nran on 1\n");
  assert.match(r.stderr, /hsm\s+[1-9]/);
  assert.match(r.stderr, /ipi\s+[1-9]/);
});

test("a guest kernel panic ends tsvisor with status 1 and the panic message", async () => {
  // No /init to run and no root device: the kernel has nothing to boot into.
  const r = await tsvisor(["run", "--append", "console=ttyS0 quiet panic=-1 rdinit=/no/such/init root=/dev/nothing", "--", "true"]);
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /tsvisor: guest kernel panic: Kernel panic - not syncing: /);
});

test("a Debian kernel cut to half its size is refused with its path and both sizes, before anything boots", async () => {
  const { kernelPath } = await pullDebianImage({ progress: () => {} });
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-linux-"));
  try {
    const whole = readFileSync(kernelPath);
    const half = join(dir, "Image-half");
    writeFileSync(half, whole.subarray(0, whole.length >> 1));
    const r = spawnSync(process.execPath, [bin, "run", "--kernel", half, "--", "true"], { encoding: "utf8", timeout: 60_000 }) as Run;
    assert.equal(r.status, 1, r.stderr);
    oneErrorLine(r, new RegExp(`kernel .*Image-half: kernel image is cut short: its PE header says the file holds ${whole.length} bytes, it has ${whole.length >> 1}$`));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("bad input gives one clear line and a non-zero status, before anything boots", () => {
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-linux-"));
  try {
    const junk = join(dir, "junk.bin");
    writeFileSync(junk, Buffer.alloc(4096, 0x5a));
    // A valid header asking for 64 MiB, for the memory checks.
    const kernel = join(dir, "Image");
    const img = Buffer.alloc(0x2000);
    img.writeBigUInt64LE(0x200000n, 0x08);
    img.writeBigUInt64LE(64n << 20n, 0x10);
    img.write("RISCV\0\0\0RSC\x05", 0x30, "latin1");
    writeFileSync(kernel, img);
    const bigInitrd = join(dir, "big.cpio");
    writeFileSync(bigInitrd, Buffer.alloc(80 << 20));
    const run = (...args: string[]) => spawnSync(process.execPath, [bin, "run", ...args], { encoding: "utf8", timeout: 60_000 }) as Run;

    oneErrorLine(run("--kernel", join(dir, "nope"), "--initrd", junk), /kernel .*nope: no such file/);
    oneErrorLine(run("--kernel", junk, "--initrd", junk), /not a RISC-V Linux kernel image/);
    oneErrorLine(run("--kernel", kernel, "--initrd", join(dir, "nope")), /initrd .*nope: no such file/);
    oneErrorLine(run("--kernel", kernel, "--initrd", bigInitrd, "--mem", "64M"), /initrd \(80.0 MiB\) is larger than guest memory/);
    oneErrorLine(run("--kernel", kernel, "--initrd", junk, "--mem", "80M"), /--mem 80.0 MiB is too small/);
    for (const cpus of ["0", "9", "two"]) {
      const r = run("--cpus", cpus, "--", "true");
      assert.equal(r.status, 2);
      oneErrorLine(r, /--cpus: expected 1\.\.8/);
    }
    for (const pcpus of ["0", "65", "x"]) {
      const r = run("--pcpus", pcpus, "--", "true");
      assert.equal(r.status, 2);
      oneErrorLine(r, /--pcpus: expected 1\.\.64/);
    }
    const stray = run("uname");
    assert.equal(stray.status, 2);
    oneErrorLine(stray, /put the guest command after --/);
    // A command's stdin goes to the guest whole: at most a quarter of --mem,
    // redirected from a file (read at once) or piped (streamed).
    const bigStdin = join(dir, "stdin.bin");
    writeFileSync(bigStdin, Buffer.alloc(17 << 20));
    const tooMuch = /stdin is larger than 16 MiB, the most a guest command takes/;
    const fd = openSync(bigStdin, "r");
    try {
      oneErrorLine(spawnSync(process.execPath, [bin, "run", "--mem", "64M", "--", "true"], { encoding: "utf8", timeout: 60_000, stdio: [fd, "pipe", "pipe"] }) as Run, tooMuch);
    } finally {
      closeSync(fd);
    }
    oneErrorLine(spawnSync(process.execPath, [bin, "run", "--mem", "64M", "--", "true"], { encoding: "utf8", timeout: 60_000, input: readFileSync(bigStdin) }) as Run, tooMuch);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
