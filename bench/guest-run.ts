// What the benchmarks that measure inside the stock Debian guest share
// (bench:io, bench:net): booting one guest under tsvisor or under QEMU's TCG
// with the same kernel, initramfs and command, collecting its console, the
// "BENCH key word value ..." lines a guest script prints, the timing helper
// (bench/programs/iobench.c: `time CMD...` prints elapsed seconds from
// CLOCK_MONOTONIC) and the figures table.

import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { commandArchive } from "../src/images/initramfs.js";
import { pullDebianImage } from "../src/images/debian.js";
import { DEFAULT_CMDLINE } from "../src/cli/run-linux.js";

export const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const bin = join(root, "bin", "tsvisor.js");
export const QEMU = "qemu-system-riscv64";
const CC = "riscv64-linux-gnu-gcc";
/** A guest that takes longer than this is stuck. */
const RUN_TIMEOUT_MS = 600_000;

export type Engine = "tsvisor" | "qemu";

export interface Image {
  kernelPath: string;
  initrd: Uint8Array;
}

export interface GuestSpec {
  engine: Engine;
  /** The shell script init runs (sh -c SCRIPT). */
  script: string;
  /** Becomes /tsvisor/stdin. */
  stdin: Uint8Array;
  mem: string;
  /** Device options for each engine (tsvisor: --disk/--net; QEMU: -drive/-netdev/-device). */
  tsvisorArgs: string[];
  qemuArgs: string[];
  /** Words added to the kernel command line (both engines). */
  append?: string;
}

/** What a guest benchmark needs before its first guest: the timing helper, the image, the engines, a scratch directory and a runner. */
export interface GuestBench {
  helper: Uint8Array;
  image: Image;
  kernelVersion: string;
  withQemu: boolean;
  engines: Engine[];
  scratch: string;
  runner: GuestRunner;
}

/**
 * Builds the helper, pulls the image, finds QEMU (unless `noQemu`), makes a
 * scratch directory named after `name` (short: a Unix socket path in it has
 * at most 107 bytes). Throws with a one-line reason.
 */
export async function prepareGuestBench(name: string, noQemu: boolean, verbose: boolean): Promise<GuestBench> {
  const helper = buildHelper();
  const pulled = await pullDebianImage({ progress: (l) => process.stderr.write(`${l}\n`) });
  const withQemu = !noQemu && qemuInstalled();
  const scratch = mkdtempSync(join(tmpdir(), `tsvisor-${name}-`));
  return {
    helper, withQemu, scratch,
    image: { kernelPath: pulled.kernelPath, initrd: readFileSync(pulled.initrdPath) },
    kernelVersion: pulled.kernelVersion,
    engines: withQemu ? ["tsvisor", "qemu"] : ["tsvisor"],
    runner: new GuestRunner(scratch, verbose),
  };
}

export const qemuInstalled = () => spawnSync("sh", ["-c", `command -v ${QEMU}`]).status === 0;

export function log(message: string): void {
  process.stderr.write(`  ${message}\n`);
}

const mtime = (path: string) => (existsSync(path) ? statSync(path).mtimeMs : 0);

/** bench/out/iobench: the guest helper, rebuilt when its source is newer; throws a one-line reason. */
export function buildHelper(): Uint8Array {
  const src = join(root, "bench", "programs", "iobench.c");
  const out = join(root, "bench", "out", "iobench");
  if (mtime(out) <= mtime(src)) {
    mkdirSync(dirname(out), { recursive: true });
    const r = spawnSync(CC, ["-static", "-O2", "-s", "-Wall", "-Wextra", "-o", out, src], { encoding: "utf8" });
    if (r.error) throw new Error(`${CC} not found: install Debian's gcc-riscv64-linux-gnu and libc6-dev-riscv64-cross (npm run bench:io installs them)`);
    if (r.status !== 0) throw new Error(`building ${src} failed:\n${r.stderr}`);
  }
  return readFileSync(out);
}

/** Boots guests and keeps track of them, so a failing partner or an exit stops the rest. */
export class GuestRunner {
  private readonly live = new Set<ChildProcess>();
  private initrds = 0;

  constructor(private readonly scratch: string, private readonly verbose: boolean) {
    process.on("exit", () => this.stopAll());
  }

  stopAll(): void {
    for (const c of this.live) c.kill("SIGTERM");
  }

  /** Boots the guest, runs the script, resolves with its console output. */
  run(g: GuestSpec, image: Image, label: string): Promise<string> {
    return new Promise((resolve, reject) => {
      const [cmd, args] = g.engine === "tsvisor" ? [process.execPath, this.tsvisorArgs(g)] : [QEMU, this.qemuArgs(g, image)];
      const child = spawn(cmd, args, { stdio: [g.engine === "tsvisor" ? "pipe" : "ignore", "pipe", "pipe"] });
      this.live.add(child);
      let out = "";
      let err = "";
      child.stdout!.on("data", (d: Buffer) => {
        out += d.toString("latin1");
        if (this.verbose) process.stderr.write(d.toString("latin1").replace(/^(?=.)/gm, `    ${label}| `));
      });
      child.stderr!.on("data", (d: Buffer) => (err += d.toString()));
      if (child.stdin) {
        child.stdin.on("error", () => {}); // an early exit is reported by close
        child.stdin.end(g.stdin);
      }
      const timer = setTimeout(() => child.kill("SIGTERM"), RUN_TIMEOUT_MS);
      child.on("error", reject);
      child.on("close", (code, signal) => {
        this.live.delete(child);
        clearTimeout(timer);
        const failed = out.split("\n").find((l) => l.startsWith("BENCH-FAIL"));
        if (code !== 0 || failed) {
          const tail = (out + err).trim().split("\n").slice(-8).join("\n");
          return reject(new Error(`${label}: ${cmd === QEMU ? "qemu" : "tsvisor"} exited with ${signal ?? `status ${code}`}${failed ? ` (${failed})` : ""}:\n${tail}`));
        }
        resolve(out);
      });
    });
  }

  /** tsvisor's command line; stdin is piped in by run(). */
  private tsvisorArgs(g: GuestSpec): string[] {
    const append = g.append ? ["--append", `${DEFAULT_CMDLINE} ${g.append}`] : [];
    return [bin, "run", "--no-snapshot", "--mem", g.mem, "--console", "hvc0", ...append, ...g.tsvisorArgs, "--", "sh", "-c", g.script];
  }

  /** QEMU's command line: the initrd tsvisor would build (image initramfs +
   *  command archive with the stdin file), written to a file. */
  private qemuArgs(g: GuestSpec, image: Image): string[] {
    const extra = commandArchive(["sh", "-c", g.script], g.stdin);
    const pad = (4 - (image.initrd.length % 4)) % 4;
    const initrd = join(this.scratch, `initrd-${++this.initrds}.cpio`);
    writeFileSync(initrd, Buffer.concat([image.initrd, Buffer.alloc(pad), extra]));
    return [
      "-M", "virt", "-smp", "1", "-m", g.mem, "-nographic", "-no-reboot",
      // virtio 1.x on the mmio transport, as tsvisor offers (QEMU defaults to legacy)
      "-global", "virtio-mmio.force-legacy=false",
      "-kernel", image.kernelPath, "-initrd", initrd, "-append", g.append ? `${DEFAULT_CMDLINE} ${g.append}` : DEFAULT_CMDLINE,
      ...g.qemuArgs,
    ];
  }
}

/** "BENCH key word value word value..." lines -> key -> {word: value}. */
export function results(out: string): Map<string, Record<string, string>> {
  const m = new Map<string, Record<string, string>>();
  for (const line of out.split(/\r?\n/)) {
    const words = line.trim().split(/\s+/);
    if (words[0] !== "BENCH" || words.length < 2) continue;
    const rec: Record<string, string> = {};
    for (let i = 2; i + 1 < words.length; i += 2) rec[words[i]] = words[i + 1];
    m.set(words[1], rec);
  }
  return m;
}

export function field(r: Map<string, Record<string, string>>, key: string, word: string, label: string): number {
  const v = Number(r.get(key)?.[word]);
  if (!Number.isFinite(v) || v <= 0) throw new Error(`${label}: no ${key} ${word} figure in the guest's output`);
  return v;
}

/** settle(): waits until every guest CPU is at least 90% idle over half a
 *  second (the first line of /proc/stat sums them). Right after init starts
 *  the command, the Debian kernel still runs a crypto self-test in the
 *  background (cryptomgr_test, ~3 s of guest CPU under tsvisor's
 *  interpreter); measuring then would halve the figures. */
export const SETTLE = `settle() {
  n=0
  want=$((45 * $(grep -c ^processor /proc/cpuinfo)))
  while [ $n -lt 60 ]; do
    read -r _ _ _ _ a _ < /proc/stat
    sleep 0.5
    read -r _ _ _ _ b _ < /proc/stat
    [ $((b - a)) -ge $want ] && break
    n=$((n + 1))
  done
  echo "BENCH settle waits $n"
}
`;

/** Shell prelude: the helper at /tmp/p, fail() that reports and stops, and settle() (SETTLE). */
export function prelude(helperFrom: string): string {
  return `${helperFrom}
chmod +x /tmp/p
fail() { echo "BENCH-FAIL $1"; cat /tmp/t 2>/dev/null; exit 1; }
${SETTLE}`;
}

/** The VMs of a VM-to-VM transfer: their addresses on eth0 and the port the receiver listens on. */
export const PAIR = { receiverIp: "10.0.0.1", senderIp: "10.0.0.2", port: 5000 };

/**
 * The listening VM of a VM-to-VM transfer: one `nc -l` per round; the -e
 * program gets the socket as stdin/stdout, times the copy to tmpfs until the
 * sender's end of stream, then answers with `reply` run on what arrived
 * (/tmp/r). `after` runs once the rounds are done.
 */
export function receiverScript(rounds: string, reply: string, after = ""): string {
  return `${prelude("cat /tsvisor/stdin > /tmp/p")}
ifconfig eth0 ${PAIR.receiverIp} netmask 255.255.255.0 up || fail ifconfig
settle
for i in ${rounds}; do
  nc -l -p ${PAIR.port} -e sh -c '/tmp/p time cat > /tmp/r 2>/tmp/t; ${reply}' || fail nc-listen
  echo "BENCH recv$i $(grep ^elapsed /tmp/t) bytes $(wc -c < /tmp/r)"
  rm -f /tmp/r
done
${after}`;
}

export interface Row {
  what: string;
  unit: string;
  ts: number;
  qemu?: number;
  /** Lower is better (latency): the ratio is printed as QEMU/tsvisor so above 1 still means tsvisor wins. */
  lowerIsBetter?: boolean;
}

export function printTable(rows: Row[], withQemu: boolean): void {
  const fmt = (v: number) => (v >= 100 ? v.toFixed(0) : v >= 1 ? v.toFixed(1) : v.toFixed(3));
  const w = Math.max(...rows.map((r) => `${r.what} (${r.unit})`.length));
  const head = `${"".padEnd(w)} ${"tsvisor".padStart(10)}${withQemu ? ` ${"QEMU TCG".padStart(10)} ${"tsvisor/QEMU".padStart(13)}` : ""}`;
  console.log(head);
  for (const r of rows) {
    let line = `${`${r.what} (${r.unit})`.padEnd(w)} ${fmt(r.ts).padStart(10)}`;
    if (withQemu && r.qemu !== undefined) line += ` ${fmt(r.qemu).padStart(10)} ${(r.lowerIsBetter ? r.qemu / r.ts : r.ts / r.qemu).toFixed(2).padStart(12)}x`;
    console.log(line);
  }
}
