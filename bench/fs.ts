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
//   npm run bench:fs
//   node dist/bench/fs.js --files 1000 --big-mib 4 --rounds 1 --no-qemu --verbose
//   node dist/bench/fs.js --only virtiofs|ext4|9p

import { spawnSync } from "node:child_process";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { cpus as hostCpus } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { field, log, prelude, prepareGuestBench, results, type Engine, type GuestBench } from "./guest-run.js";

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

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      files: { type: "string", default: "2000" },
      "big-mib": { type: "string", default: "16" },
      rounds: { type: "string", default: "2" },
      "no-qemu": { type: "boolean", default: false },
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
  if (only !== undefined && !["virtiofs", "ext4", "9p"].includes(only)) fail("--only: virtiofs, ext4 or 9p");
  const want = (what: string) => only === undefined || only === what;
  if (spawnSync("sh", ["-c", "command -v mke2fs"]).status !== 0) fail("mke2fs not found (apt-get install e2fsprogs)");
  let bench: GuestBench;
  try {
    bench = await prepareGuestBench("fs", values["no-qemu"], values.verbose);
  } catch (e) {
    fail((e as Error).message);
  }
  const { helper, image, withQemu, scratch, runner } = bench;
  const tree = join(scratch, "tree");
  const { bytes, entries } = makeTree(tree, files, bigMiB);
  const tarball = join(scratch, "src.tar");
  const t = spawnSync("tar", ["cf", tarball, "-C", tree, "."], { encoding: "utf8" });
  if (t.status !== 0) fail(`tar: ${t.stderr.trim()}`);
  rmSync(tree, { recursive: true, force: true });
  const stdin = Buffer.concat([helper, readFileSync(tarball)]);
  const ext4Mount = "mount -t ext4 /dev/vda /mnt/b || fail mount-ext4";

  console.log(`shared folders inside the guest: Debian ${bench.kernelVersion} kernel, busybox initramfs, 1 hart, ${MEM}`);
  console.log(`host: ${hostCpus()[0]?.model ?? "unknown CPU"} x${hostCpus().length}, Node ${process.version}`);
  console.log(`tree: ${files} small files (100 B-8 KiB) + ${bigMiB} x 1 MiB, ${entries} entries, ${(bytes / 1e6).toFixed(1)} MB; best of ${rounds} round(s)`);

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
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }

  console.log("");
  const w = Math.max(...rows.map((r) => r.what.length));
  console.log(`${"seconds (lower is better)".padEnd(w)} ${"untar+sync".padStart(11)} ${"ls -lR".padStart(8)} ${"read back".padStart(10)}`);
  for (const r of rows) console.log(`${r.what.padEnd(w)} ${r.f.untar.toFixed(2).padStart(11)} ${r.f.stat.toFixed(2).padStart(8)} ${r.f.read.toFixed(2).padStart(10)}`);
  console.log("");
  console.log("untar: busybox tar xf from tmpfs, then sync. ls -lR: every entry stat'ed. read back: tar c | wc -c after drop_caches.");
  console.log("virtio-fs: tsvisor's FUSE server on its I/O thread, 1 s entry/attr cache, no writeback cache, no DAX.");
  if (!withQemu) console.log(`QEMU: ${values["no-qemu"] ? "skipped (--no-qemu)" : "qemu-system-riscv64 not installed"}`);
}

main().catch((e) => fail(e instanceof Error ? e.message : String(e)));
