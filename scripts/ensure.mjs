// Makes a fresh clone runnable: installs npm dependencies, the Debian packages
// the image pull needs (xz for Debian's .ko.xz kernel modules, the riscv64
// Linux cross compiler and C library for the guest agent), with --test also
// those the test suite uses (riscv64 cross compilers: bare-metal for the ISA
// programs, Linux with its C library for the guest's SMP test programs; dtc,
// cpio), with --bench-io the riscv64 Linux cross compiler and C library for
// the I/O benchmark's static guest helper, then builds.
// Each step is skipped when already done, so running it every time is cheap.
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, statSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const wantTest = process.argv.includes("--test");
const wantBenchIo = process.argv.includes("--bench-io");

function say(msg) {
  process.stderr.write(`tsvisor setup: ${msg}\n`);
}
function fail(msg) {
  say(msg);
  process.exit(1);
}
// A command name, or an absolute path for a package that installs no command.
const has = (cmd) => cmd.startsWith("/") ? existsSync(cmd) : spawnSync("sh", ["-c", `command -v ${cmd}`], { stdio: "ignore" }).status === 0;

// npm dependencies
const lock = join(root, "package-lock.json");
const installed = join(root, "node_modules", ".package-lock.json");
if (!existsSync(installed) || (existsSync(lock) && statSync(lock).mtimeMs > statSync(installed).mtimeMs)) {
  say("installing npm dependencies");
  const r = spawnSync("npm", [existsSync(lock) ? "ci" : "install", "--no-audit", "--no-fund"], { cwd: root, stdio: "inherit" });
  if (r.status !== 0) fail("npm install failed");
}

// Debian packages: command -> package
const runTools = {
  xz: "xz-utils", // the image pull decompresses Debian's .ko.xz modules
  mke2fs: "e2fsprogs", // image pull debian makes the root file system with mke2fs -d
  // the guest agent of `tsvisor vm exec` (src/images/agent/agent.c), static, built into the initramfs
  "riscv64-linux-gnu-gcc": "gcc-riscv64-linux-gnu",
  "/usr/riscv64-linux-gnu/lib/libc.a": "libc6-dev-riscv64-cross",
};
const testTools = {
  "riscv64-unknown-elf-gcc": "gcc-riscv64-unknown-elf",
  dtc: "device-tree-compiler",
  cpio: "cpio",
  "qemu-img": "qemu-utils", // disk image interop tests (qemu-img, qemu-io)
  // the socket backends' interop test against QEMU's -netdev stream and dgram (src/backends/net/qemu-interop.test.ts)
  "qemu-system-riscv64": "qemu-system-misc",
  "riscv64-linux-gnu-readelf": "binutils-riscv64-linux-gnu", // reads the kernel modules tsvisor rewrites
  // static riscv64 Linux programs the SMP tests run in the guest (src/host/testing/guest/)
  "riscv64-linux-gnu-gcc": "gcc-riscv64-linux-gnu",
  "/usr/riscv64-linux-gnu/lib/libc.a": "libc6-dev-riscv64-cross",
  // the OpenMetrics parser the host daemon's /metrics test checks its text with
  "/usr/lib/python3/dist-packages/prometheus_client/openmetrics/parser.py": "python3-prometheus-client",
  // the network tests' namespaces, veth pairs and Linux vxlan devices, and what they check with
  ip: "iproute2",
  ethtool: "ethtool",
  ping: "iputils-ping",
};
const benchIoTools = {
  "riscv64-linux-gnu-gcc": "gcc-riscv64-linux-gnu", // bench/programs/iobench.c, static
  // only recommended by the compiler, which --no-install-recommends skips
  "/usr/riscv64-linux-gnu/lib/libc.a": "libc6-dev-riscv64-cross",
};
{
  const wanted = { ...runTools, ...(wantTest ? testTools : {}), ...(wantBenchIo ? benchIoTools : {}) };
  const missing = Object.entries(wanted).filter(([cmd]) => !has(cmd)).map(([, pkg]) => pkg);
  if (missing.length > 0) {
    if (!has("apt-get")) fail(`missing ${missing.join(", ")}: install them with your package manager (Debian/Ubuntu package names)`);
    const asRoot = process.getuid && process.getuid() === 0;
    const sudo = asRoot ? [] : has("sudo") ? ["sudo"] : null;
    if (!sudo) fail(`missing ${missing.join(", ")}: run as root or install them: apt-get install ${missing.join(" ")}`);
    say(`installing Debian packages: ${missing.join(" ")}`);
    const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
    const run = (args) => {
      const cmd = sudo.length ? "sudo" : args[0];
      const argv = sudo.length ? args : args.slice(1);
      return spawnSync(cmd, argv, { stdio: ["ignore", "inherit", "inherit"], env }).status === 0;
    };
    if (!run(["apt-get", "update", "-qq"])) fail("apt-get update failed");
    if (!run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", ...missing])) fail(`apt-get install ${missing.join(" ")} failed`);
  }
}

try {
  execFileSync(process.execPath, [join(root, "scripts", "build.mjs")], { cwd: root, stdio: "inherit" });
} catch {
  process.exit(1);
}
