// Shared-folder benchmark: what the busybox guest can do with a source tree
// (it has no compiler), inside the stock Debian guest (1 hart, 512 MiB):
// - untar: a generated tree (FILES small files of 100 B to 8 KiB in nested
//   directories, plus BIG large files) extracted from a tarball in tmpfs onto
//   the filesystem under test, then `sync`;
// - stat walk: `ls -lR` of the tree (lookups and getattr, no data);
// - read back: `tar c` of the tree piped to `wc -c` (every file read), after
//   the guest dropped its caches (echo 3 > /proc/sys/vm/drop_caches).
// On three filesystems:
// - tsvisor virtio-fs: `--share` of a host directory (this is what's measured);
// - tsvisor virtio-blk ext4: an ext4 image made on the host (mke2fs), vda;
// - QEMU 9p: QEMU's TCG with -fsdev local + virtio-9p-device (virtio-mmio),
//   mounted with trans=virtio,version=9p2000.L,msize=512000 (cache=none,
//   QEMU's default), same kernel and initramfs. Also QEMU's virtio-blk ext4.
// Times are taken inside the guest (CLOCK_MONOTONIC, bench/programs/iobench.c
// `time`), boot excluded; the tarball reaches the guest as its stdin.
// Each figure is the best of ROUNDS rounds within one boot.
//
// Then a C build, in the Debian system (`image pull debian`) with gcc and
// make installed into a disk kept in the cache (made once, minutes): a
// generated project of BUILD_MODULES files untarred and built with `make` on
// the tsvisor share, on the system's own ext4 root disk (virtio-blk, a qcow2
// overlay), and under QEMU on a 9p share and on the same root disk. Every
// configuration runs the program it built, and the outputs must agree.
//
//   npm run bench:fs
//   node dist/bench/fs.js --files 1000 --big-mib 4 --rounds 1 --no-qemu --verbose
//   node dist/bench/fs.js --only virtiofs|ext4|9p|build
//   node dist/bench/fs.js --no-build      (the busybox part only: no Debian system)

import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { cpus as hostCpus } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { SETTLE, bin, field, log, prelude, prepareGuestBench, results, type Engine, type GuestBench } from "./guest-run.js";
import { createQcow2 } from "../src/backends/disk/qcow2/create.js";
import { keptDiskPath } from "../src/cli/system-image.js";
import { defaultCacheDir } from "../src/images/image-cache.js";
import { checkCachedSystem, debianSystemDir } from "../src/images/debian-system.js";

const MEM = "512M";
const DISK_MIB = 512;

function fail(message: string): never {
  process.stderr.write(`bench:fs: ${message}\n`);
  process.exit(1);
}

/** A deterministic tree: FILES small text files in dirs of at most 40, BIG files of 1 MiB each... */
function makeTree(dir: string, files: number, bigMiB: number): { bytes: number; entries: number } {
  let seed = 12345;
  const next = () => (seed = (seed * 1103515245 + 12345) >>> 0);
  let bytes = 0;
  let entries = 0;
  const words = ["int", "return", "static", "void", "struct", "const", "if", "else", "for", "while", "(x)", "{", "}", ";", "\n"];
  for (let i = 0; i < files; i++) {
    const d = join(dir, "src", `m${Math.floor(i / 400)}`, `d${Math.floor(i / 40) % 10}`);
    if (i % 40 === 0) {
      mkdirSync(d, { recursive: true });
      entries++;
    }
    const size = 100 + (next() % 8092);
    let text = "";
    while (text.length < size) text += words[next() % words.length] + " ";
    writeFileSync(join(d, `f${i}.c`), text.slice(0, size));
    bytes += size;
    entries++;
  }
  mkdirSync(join(dir, "big"), { recursive: true });
  const chunk = Buffer.alloc(1 << 20);
  for (let i = 0; i < bigMiB; i++) {
    for (let j = 0; j < chunk.length; j += 4) chunk.writeUInt32LE(next(), j);
    writeFileSync(join(dir, "big", `blob${i}.bin`), chunk);
    bytes += chunk.length;
    entries++;
  }
  return { bytes, entries };
}

/** The guest's script: ROUNDS times untar into $MNT/rI, sync, ls -lR, drop caches, tar c | wc -c. */
function script(mount: string, rounds: number, helperBytes: number, expectBytes: number): string {
  const rs = Array.from({ length: rounds }, (_, i) => i + 1).join(" ");
  return `${prelude(`head -c ${helperBytes} /tsvisor/stdin > /tmp/p`)}
tail -c +${helperBytes + 1} /tsvisor/stdin > /tmp/src.tar
${mount}
settle
for i in ${rs}; do
  mkdir -p /mnt/b/r$i || fail mkdir
  /tmp/p time sh -c "tar xf /tmp/src.tar -C /mnt/b/r$i && sync" 2>/tmp/t || fail untar
  echo "BENCH untar$i $(grep ^elapsed /tmp/t)"
  /tmp/p time sh -c "ls -lR /mnt/b/r$i > /tmp/ls" 2>/tmp/t || fail ls
  echo "BENCH stat$i $(grep ^elapsed /tmp/t) lines $(wc -l < /tmp/ls)"
  sync; echo 3 > /proc/sys/vm/drop_caches
  /tmp/p time sh -c "tar cf - -C /mnt/b/r$i . | wc -c > /tmp/n" 2>/tmp/t || fail read
  echo "BENCH read$i $(grep ^elapsed /tmp/t) bytes $(cat /tmp/n)"
  [ "$(cat /tmp/n)" -gt ${expectBytes} ] || fail short-read
done
`;
}

interface Figures {
  untar: number;
  stat: number;
  read: number;
}

// ---- the C build in the Debian system ---------------------------------------

/** Source files of the generated project (plus main.c). */
const BUILD_MODULES = 24;
/** The kept disk with gcc and make (tsvisor's cache, disks/). */
const BUILD_DISK = "bench-fs-gcc";
const BUILD_MEM = "1G";

/** One generated function: loops, a struct, a switch, some floating point. */
function cFunction(m: number, f: number): string {
  return [
    `struct s${m}_${f} { unsigned long a[8]; double d; int n; };`,
    ``,
    `static unsigned long f${m}_${f}(unsigned long x) {`,
    `  struct s${m}_${f} st = { .n = ${f + 3} };`,
    `  for (int i = 0; i < 8; i++) st.a[i] = x * ${m * 7 + f + 1}u + (unsigned long)i;`,
    `  for (int r = 0; r < st.n; r++) {`,
    `    for (int i = 0; i < 8; i++) {`,
    `      switch ((st.a[i] + r) % 4) {`,
    `        case 0: st.a[i] ^= st.a[(i + 1) % 8] << ${(f % 5) + 1}; break;`,
    `        case 1: st.a[i] += st.a[(i + 3) % 8] >> ${(m % 3) + 1}; break;`,
    `        case 2: st.d += (double)(st.a[i] % 1000) / ${m + f + 2}.0; break;`,
    `        default: st.a[i] = st.a[i] * 2654435761u + ${f};`,
    `      }`,
    `    }`,
    `  }`,
    `  unsigned long h = (unsigned long)st.d;`,
    `  for (int i = 0; i < 8; i++) h = h * 31 + st.a[i];`,
    `  return h;`,
    `}`,
    ``,
  ].join("\n");
}

/** A deterministic C project in dir/proj: BUILD_MODULES modules of six functions, a header, main.c and a Makefile. */
function makeProject(dir: string): void {
  const p = join(dir, "proj");
  mkdirSync(p, { recursive: true });
  const lines = (...l: string[]) => l.join("\n") + "\n";
  for (let m = 0; m < BUILD_MODULES; m++) {
    const fns = Array.from({ length: 6 }, (_, f) => cFunction(m, f));
    const calls = Array.from({ length: 6 }, (_, f) => `  h = h * 131 + f${m}_${f}(h + ${f});`);
    writeFileSync(join(p, `mod${m}.c`), lines(`#include "proj.h"`, ``, ...fns, `unsigned long mod${m}(unsigned long seed) {`, `  unsigned long h = seed;`, ...calls, `  return h;`, `}`));
  }
  const decls = Array.from({ length: BUILD_MODULES }, (_, m) => `unsigned long mod${m}(unsigned long seed);`);
  writeFileSync(join(p, "proj.h"), lines(`#ifndef PROJ_H`, `#define PROJ_H`, ...decls, `#endif`));
  const calls = Array.from({ length: BUILD_MODULES }, (_, m) => `  h = mod${m}(h);\n  printf("%d %lu\\n", ${m}, h);`);
  writeFileSync(join(p, "main.c"), lines(`#include <stdio.h>`, `#include "proj.h"`, ``, `int main(void) {`, `  unsigned long h = 1;`, ...calls, `  return 0;`, `}`));
  const objs = ["main.o", ...Array.from({ length: BUILD_MODULES }, (_, m) => `mod${m}.o`)].join(" ");
  writeFileSync(join(p, "Makefile"), lines(`CC = gcc`, `CFLAGS = -O2 -Wall`, `OBJS = ${objs}`, ``, `prog: $(OBJS)`, `\t$(CC) -o $@ $(OBJS)`, ``, `%.o: %.c proj.h`, `\t$(CC) $(CFLAGS) -c -o $@ $<`));
}

/** The build script, run chrooted in the Debian system: ROUNDS times, untar and make in `dir`. */
function buildScript(dir: string, mount: string, rounds: number): string {
  const rs = Array.from({ length: rounds }, (_, i) => i + 1).join(" ");
  return `fail() { echo "BENCH-FAIL $1"; cat /tmp/log 2>/dev/null; exit 1; }
cat > /tmp/proj.tar || fail stdin
${mount}
${SETTLE}
settle
now() { date +%s.%N; }
since() { echo "$(now) $1" | awk '{ printf "%.3f", $1 - $2 }'; }
for i in ${rs}; do
  d=${dir}/r$i
  mkdir -p $d || fail mkdir
  t=$(now); tar xf /tmp/proj.tar -C $d && sync || fail untar
  echo "BENCH buntar$i elapsed $(since $t)"
  t=$(now); make -s -C $d/proj > /tmp/log 2>&1 && sync || fail make
  echo "BENCH build$i elapsed $(since $t) out $($d/proj/prog | md5sum | cut -c1-16)"
done
`;
}

/** Runs the tsvisor CLI with the terminal's stderr (progress); throws with its status. */
function tsvisorCli(args: string[], what: string): void {
  const r = spawnSync(process.execPath, [bin, ...args], { stdio: ["ignore", "ignore", "inherit"], timeout: 3_600_000 });
  if (r.status !== 0) throw new Error(`${what} failed (status ${r.status ?? r.signal})`);
}

/** The kept Debian disk with gcc and make, and its virtual size (the system
 *  image's): the image pulled and the packages installed on first use. */
async function gccDisk(): Promise<{ disk: string; size: number }> {
  log("the Debian system image (image pull debian: built once, 10 to 15 minutes)");
  tsvisorCli(["image", "pull", "debian"], "image pull debian");
  const system = await checkCachedSystem(debianSystemDir(defaultCacheDir()));
  if (!system) throw new Error("image pull debian succeeded, but its image is not in the cache");
  const disk = keptDiskPath(defaultCacheDir(), BUILD_DISK);
  const ready = `${disk}.gcc`;
  if (!existsSync(ready)) {
    log(`installing gcc and make into the kept disk ${disk} (apt-get in a tsvisor guest, once: minutes)`);
    tsvisorCli(["run", "--image", "debian", "--disk-name", BUILD_DISK, "--mem", BUILD_MEM, "--", "sh", "-c",
      "apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends gcc libc6-dev make >/dev/null"], "installing gcc");
    writeFileSync(ready, "gcc libc6-dev make\n");
  }
  return { disk, size: system.disk.virtualSize };
}

interface BuildFigures {
  what: string;
  untar: number;
  build: number;
}

/** The C build on the four configurations; their programs' outputs must agree. */
async function runBuilds(bench: GuestBench, rounds: number): Promise<BuildFigures[]> {
  const { image, withQemu, scratch, runner } = bench;
  console.log(`C build: the Debian system disk (image pull debian) with gcc and make, ${BUILD_MEM}, 1 vCPU; best of ${rounds} round(s)`);
  const { disk, size } = await gccDisk();
  const src = join(scratch, "proj-src");
  makeProject(src);
  const tarball = join(scratch, "proj.tar");
  const t = spawnSync("tar", ["cf", tarball, "-C", src, "."], { encoding: "utf8" });
  if (t.status !== 0) throw new Error(`tar: ${t.stderr.trim()}`);
  const stdin = readFileSync(tarball);
  const shareDir = join(scratch, "build-share");
  let overlays = 0;
  /** A throwaway overlay on the kept disk: the runs never change it. */
  const overlay = () => {
    const path = join(scratch, `root-${++overlays}.qcow2`);
    createQcow2(path, { size, backingFile: disk, backingFormat: "qcow2" });
    return path;
  };
  const qemuDisk = (path: string) => ["-drive", `file=${path},if=none,id=d0,format=qcow2,cache=writeback`, "-device", "virtio-blk-device,drive=d0"];
  const outputs = new Set<string>();
  const rows: BuildFigures[] = [];
  const run = async (engine: Engine, what: string, dir: string, mount: string, args: { tsvisorArgs: string[]; qemuArgs: string[] }) => {
    const start = performance.now();
    const out = await runner.run({ engine, script: buildScript(dir, mount, rounds), stdin, mem: BUILD_MEM, append: "tsvisor.root=/dev/vda", ...args }, image, what);
    const r = results(out);
    const best = (k: string) => Math.min(...Array.from({ length: rounds }, (_, i) => field(r, `${k}${i + 1}`, "elapsed", what)));
    for (let i = 1; i <= rounds; i++) outputs.add(r.get(`build${i}`)?.out ?? "none");
    const f = { what, untar: best("buntar"), build: best("build") };
    log(`${what}: untar ${f.untar.toFixed(2)} s, make ${f.build.toFixed(2)} s (run ${((performance.now() - start) / 1000).toFixed(1)} s)`);
    rows.push(f);
  };
  const fresh = () => {
    rmSync(shareDir, { recursive: true, force: true });
    mkdirSync(shareDir, { recursive: true });
  };
  fresh();
  await run("tsvisor", "tsvisor virtio-fs", "/mnt/share", "", { tsvisorArgs: ["--disk", `${overlay()},format=qcow2`, "--share", `${shareDir}:/mnt/share`, "--net", "none"], qemuArgs: [] });
  await run("tsvisor", "tsvisor virtio-blk ext4 (root disk)", "/root/b", "", { tsvisorArgs: ["--disk", `${overlay()},format=qcow2`, "--net", "none"], qemuArgs: [] });
  if (withQemu) {
    fresh();
    await run("qemu", "QEMU TCG 9p", "/mnt/share", "mkdir -p /mnt/share; mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 host0 /mnt/share || fail mount-9p", {
      tsvisorArgs: [],
      qemuArgs: [...qemuDisk(overlay()), "-fsdev", `local,id=fs0,path=${shareDir},security_model=none`, "-device", "virtio-9p-device,fsdev=fs0,mount_tag=host0"],
    });
    await run("qemu", "QEMU TCG virtio-blk ext4 (root disk)", "/root/b", "", { tsvisorArgs: [], qemuArgs: qemuDisk(overlay()) });
  }
  if (outputs.size !== 1) throw new Error(`the C build's programs printed different outputs (${[...outputs].join(", ")})`);
  return rows;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      files: { type: "string", default: "2000" },
      "big-mib": { type: "string", default: "16" },
      rounds: { type: "string", default: "2" },
      "no-qemu": { type: "boolean", default: false },
      "no-build": { type: "boolean", default: false },
      only: { type: "string" },
      verbose: { type: "boolean", default: false },
    },
  });
  const files = Number(values.files);
  const bigMiB = Number(values["big-mib"]);
  const rounds = Number(values.rounds);
  if (!(Number.isInteger(files) && files >= 1 && files <= 50_000)) fail("--files: 1..50000");
  if (!(Number.isInteger(bigMiB) && bigMiB >= 0 && bigMiB <= 64)) fail("--big-mib: 0..64");
  if (!(Number.isInteger(rounds) && rounds >= 1 && rounds <= 5)) fail("--rounds: 1..5");
  const only = values.only;
  if (only !== undefined && !["virtiofs", "ext4", "9p", "build"].includes(only)) fail("--only: virtiofs, ext4, 9p or build");
  if (only === "build" && values["no-build"]) fail("--only build and --no-build exclude each other");
  const want = (what: string) => only === undefined || only === what;
  const wantBuild = !values["no-build"] && want("build");
  if (spawnSync("sh", ["-c", "command -v mke2fs"]).status !== 0) fail("mke2fs not found (apt-get install e2fsprogs)");
  let bench: GuestBench;
  try {
    bench = await prepareGuestBench("fs", values["no-qemu"], values.verbose);
  } catch (e) {
    fail((e as Error).message);
  }
  const { helper, image, withQemu, scratch, runner } = bench;
  const busybox = only !== "build";
  const tree = join(scratch, "tree");
  const { bytes, entries } = busybox ? makeTree(tree, files, bigMiB) : { bytes: 0, entries: 0 };
  const tarball = join(scratch, "src.tar");
  const t = spawnSync("tar", ["cf", tarball, "-C", busybox ? tree : scratch, busybox ? "." : "--files-from=/dev/null"], { encoding: "utf8" });
  if (t.status !== 0) fail(`tar: ${t.stderr.trim()}`);
  rmSync(tree, { recursive: true, force: true });
  const stdin = Buffer.concat([helper, readFileSync(tarball)]);
  const ext4Mount = "mount -t ext4 /dev/vda /mnt/b || fail mount-ext4";

  console.log(`shared folders inside the guest: Debian ${bench.kernelVersion} kernel${busybox ? `, busybox initramfs, 1 hart, ${MEM}` : ""}`);
  console.log(`host: ${hostCpus()[0]?.model ?? "unknown CPU"} x${hostCpus().length}, Node ${process.version}`);
  if (busybox) console.log(`tree: ${files} small files (100 B-8 KiB) + ${bigMiB} x 1 MiB, ${entries} entries, ${(bytes / 1e6).toFixed(1)} MB; best of ${rounds} round(s)`);

  const run = async (engine: Engine, what: string, mount: string, setup: () => { tsvisorArgs: string[]; qemuArgs: string[] }): Promise<Figures> => {
    const args = setup();
    const start = performance.now();
    const out = await runner.run({ engine, script: script(mount, rounds, helper.length, bytes), stdin, mem: MEM, ...args }, image, what);
    const r = results(out);
    const best = (k: string) => Math.min(...Array.from({ length: rounds }, (_, i) => field(r, `${k}${i + 1}`, "elapsed", what)));
    const f = { untar: best("untar"), stat: best("stat"), read: best("read") };
    log(`${what}: untar ${f.untar.toFixed(2)} s, ls -lR ${f.stat.toFixed(2)} s, read back ${f.read.toFixed(2)} s (run ${((performance.now() - start) / 1000).toFixed(1)} s)`);
    return f;
  };
  const ext4Image = (name: string) => () => {
    const img = join(scratch, name);
    rmSync(img, { force: true });
    const m = spawnSync("mke2fs", ["-q", "-F", "-t", "ext4", img, `${DISK_MIB}M`], { encoding: "utf8" });
    if (m.status !== 0) throw new Error(`mke2fs: ${m.stderr.trim()}`);
    return {
      tsvisorArgs: ["--disk", `${img},format=raw`, "--net", "none"],
      qemuArgs: ["-drive", `file=${img},if=none,id=d0,format=raw,cache=writeback`, "-device", "virtio-blk-device,drive=d0"],
    };
  };
  const shareDir = join(scratch, "share");
  const rows: { what: string; f: Figures }[] = [];
  let buildRows: BuildFigures[] = [];
  try {
    mkdirSync(shareDir, { recursive: true });
    if (want("virtiofs")) rows.push({ what: "tsvisor virtio-fs", f: await run("tsvisor", "tsvisor virtio-fs", "", () => ({ tsvisorArgs: ["--share", `${shareDir}:/mnt/b`, "--net", "none"], qemuArgs: [] })) });
    rmSync(shareDir, { recursive: true, force: true });
    if (want("ext4")) rows.push({ what: "tsvisor virtio-blk ext4", f: await run("tsvisor", "tsvisor virtio-blk ext4", `mkdir -p /mnt/b; ${ext4Mount}`, ext4Image("ts.ext4")) });
    rmSync(join(scratch, "ts.ext4"), { force: true });
    if (withQemu && want("9p")) {
      mkdirSync(shareDir, { recursive: true });
      rows.push({
        what: "QEMU TCG 9p", f: await run("qemu", "QEMU 9p", "mkdir -p /mnt/b; mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 host0 /mnt/b || fail mount-9p", () => ({
          tsvisorArgs: [],
          qemuArgs: ["-fsdev", `local,id=fs0,path=${shareDir},security_model=none`, "-device", "virtio-9p-device,fsdev=fs0,mount_tag=host0"],
        })),
      });
      rmSync(shareDir, { recursive: true, force: true });
    }
    if (withQemu && want("ext4")) {
      rows.push({ what: "QEMU TCG virtio-blk ext4", f: await run("qemu", "QEMU virtio-blk ext4", `mkdir -p /mnt/b; ${ext4Mount}`, ext4Image("q.ext4")) });
    }
    if (wantBuild) buildRows = await runBuilds(bench, rounds);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }

  console.log("");
  if (rows.length > 0) {
    const w = Math.max(...rows.map((r) => r.what.length));
    console.log(`${"seconds (lower is better)".padEnd(w)} ${"untar+sync".padStart(11)} ${"ls -lR".padStart(8)} ${"read back".padStart(10)}`);
    for (const r of rows) console.log(`${r.what.padEnd(w)} ${r.f.untar.toFixed(2).padStart(11)} ${r.f.stat.toFixed(2).padStart(8)} ${r.f.read.toFixed(2).padStart(10)}`);
    console.log("");
    console.log("untar: busybox tar xf from tmpfs, then sync. ls -lR: every entry stat'ed. read back: tar c | wc -c after drop_caches.");
  }
  if (buildRows.length > 0) {
    if (rows.length > 0) console.log("");
    const w = Math.max(...buildRows.map((r) => r.what.length));
    console.log(`${"C build, seconds (lower is better)".padEnd(w)} ${"untar+sync".padStart(11)} ${"make".padStart(8)}`);
    for (const r of buildRows) console.log(`${r.what.padEnd(w)} ${r.untar.toFixed(2).padStart(11)} ${r.build.toFixed(2).padStart(8)}`);
    console.log("");
    console.log(`C build: Debian trixie's gcc -O2, make -j1 of ${BUILD_MODULES + 1} files (${BUILD_MODULES * 6} functions), in the Debian system (${BUILD_MEM}, 1 vCPU); every configuration's program printed the same output.`);
  }
  console.log("virtio-fs: tsvisor's FUSE server on its I/O thread, 1 s entry/attr cache, no writeback cache, no DAX.");
  if (!withQemu) console.log(`QEMU: ${values["no-qemu"] ? "skipped (--no-qemu)" : "qemu-system-riscv64 not installed"}`);
}

main().catch((e) => fail(e instanceof Error ? e.message : String(e)));
