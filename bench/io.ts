// I/O benchmark: virtio-blk and virtio-net measured inside the stock Debian
// guest (pulled kernel, tsvisor's busybox initramfs, 1 hart, 512 MiB).
//
// Disk, for a raw and a fresh qcow2 image of 256 MiB (vda):
// - sequential write then read of N MiB with busybox dd, bs=1M and O_DIRECT
//   (oflag/iflag=direct; the write ends with conv=fsync, a flush), each round
//   on a region not written before (on qcow2 the write allocates clusters);
// - random 4 KiB reads then writes over the first N MiB, one at a time (queue
//   depth 1), O_DIRECT, for a few seconds each (bench/programs/iobench.c;
//   the writes end with fsync). On qcow2 that span was allocated by the
//   first sequential write, so the random writes rewrite allocated clusters.
// Network: two VMs joined by the Unix socket backend (--net socket=listen: /
// connect:), eth0 10.0.0.1 and 10.0.0.2. The sender pipes N MiB of random
// bytes into busybox nc; the receiver (nc -l -e) copies the stream to tmpfs
// and times it from accept to end of stream, then sends back its md5, which
// must match.
// Each figure is the best of two rounds within one boot (the host is often
// shared with other work).
//
// Every time is taken inside the guest (CLOCK_MONOTONIC, through iobench's
// `time` and `rand` commands), so boot is not counted. The helper is a
// static riscv64 Linux binary (Debian's riscv64-linux-gnu-gcc); it reaches
// the guest as the command's stdin, /tsvisor/stdin (src/images/init.ts).
//
// When qemu-system-riscv64 is installed (Debian's qemu-system-misc), the same
// kernel, initrd, command and images run under QEMU's TCG on its virt machine
// (virtio-blk-device, and virtio-net-device over -netdev stream between two
// QEMUs) in the same run, and tsvisor/QEMU is printed per figure (below 1:
// QEMU is faster). Figures only, no assertions.
//
//   npm run bench:io
//   node dist/bench/io.js --seq-mib 128 --rand-seconds 3 --net-mib 16 --verbose
//   node dist/bench/io.js --only disk|net --no-qemu

import { createHash, randomBytes } from "node:crypto";
import { existsSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { cpus as hostCpus } from "node:os";
import { join } from "node:path";
import { spawnSync } from "node:child_process";
import { parseArgs } from "node:util";
import { GuestRunner, PAIR, QEMU, bin, field, log, prelude, prepareGuestBench, printTable, receiverScript, results, type Engine, type GuestBench, type Image, type Row } from "./guest-run.js";

const DISK_MIB = 256;
const MEM = "512M";
/** Every figure is the best of this many runs inside one boot: the host is
 *  often shared, and a neighbour's burst should not be the figure. */
const ROUNDS = 2;
const rounds = () => Array.from({ length: ROUNDS }, (_, i) => i + 1).join(" ");

function fail(message: string): never {
  process.stderr.write(`bench:io: ${message}\n`);
  process.exit(1);
}

let runner: GuestRunner;
let scratch = "";

// ---- guest scripts ----------------------------------------------------------

/** ROUNDS rounds; round i writes and reads its own fresh region (so on qcow2
 *  every sequential write allocates), the random I/O stays in the first one. */
function diskScript(seqMiB: number, randSeconds: number): string {
  const span = seqMiB << 20;
  return `${prelude("cat /tsvisor/stdin > /tmp/p")}
settle
at=0
for i in ${rounds()}; do
  /tmp/p time dd if=/dev/zero of=/dev/vda bs=1M seek=$at count=${seqMiB} oflag=direct conv=fsync,notrunc 2>/tmp/t || fail seqwrite
  echo "BENCH seqwrite$i $(grep ^elapsed /tmp/t)"
  /tmp/p time dd if=/dev/vda of=/dev/null bs=1M skip=$at count=${seqMiB} iflag=direct 2>/tmp/t || fail seqread
  echo "BENCH seqread$i $(grep ^elapsed /tmp/t)"
  r=$(/tmp/p rand /dev/vda read ${span} ${randSeconds} 2>/tmp/t) || fail randread
  echo "BENCH randread$i $r"
  r=$(/tmp/p rand /dev/vda write ${span} ${randSeconds} 2>/tmp/t) || fail randwrite
  echo "BENCH randwrite$i $r"
  at=$((at + ${seqMiB}))
done
`;
}

const { receiverIp: RECEIVER_IP, senderIp: SENDER_IP, port: PORT } = PAIR;

/** The connecting VM: stdin is the helper followed by the payload. It waits
 *  for the receiver to answer ping, then sends the payload once per round,
 *  retrying while the receiver is not listening yet (connection refused). */
function senderScript(helperBytes: number): string {
  return `${prelude(`head -c ${helperBytes} /tsvisor/stdin > /tmp/p`)}
tail -c +${helperBytes + 1} /tsvisor/stdin > /tmp/payload
ifconfig eth0 ${SENDER_IP} netmask 255.255.255.0 up || fail ifconfig
settle
n=0; until ping -c 1 -W 1 ${RECEIVER_IP} >/dev/null 2>&1; do n=$((n+1)); [ $n -lt 300 ] || fail ping; done
for i in ${rounds()}; do
  n=0
  until /tmp/p time nc ${RECEIVER_IP} ${PORT} < /tmp/payload > /tmp/md5 2>/tmp/t && [ -s /tmp/md5 ]; do
    n=$((n+1)); [ $n -lt 300 ] || fail nc-connect; sleep 0.2
  done
  echo "BENCH send$i $(grep ^elapsed /tmp/t) md5 $(cut -d' ' -f1 /tmp/md5)"
done
`;
}

// ---- workloads --------------------------------------------------------------

interface DiskFigures {
  seqWriteMBs: number;
  seqReadMBs: number;
  randReadIops: number;
  randWriteIops: number;
}

async function diskRun(engine: Engine, format: "raw" | "qcow2", image: Image, helper: Uint8Array, seqMiB: number, randSeconds: number): Promise<DiskFigures> {
  const path = join(scratch, `${engine}-disk.${format}`);
  rmSync(path, { force: true });
  if (format === "raw") {
    writeFileSync(path, "");
    truncateSync(path, DISK_MIB << 20);
  } else {
    const r = spawnSync(process.execPath, [bin, "disk", "create", "--size", `${DISK_MIB}M`, path], { encoding: "utf8" });
    if (r.status !== 0) throw new Error(`tsvisor disk create: ${r.stderr.trim()}`);
  }
  const label = `${engine} ${format}`;
  const start = performance.now();
  const out = await runner.run({
    engine, script: diskScript(seqMiB, randSeconds), stdin: helper, mem: MEM,
    tsvisorArgs: ["--disk", `${path},format=${format}`, "--net", "none"],
    qemuArgs: ["-drive", `file=${path},if=none,id=d0,format=${format},cache=writeback`, "-device", "virtio-blk-device,drive=d0"],
  }, image, label);
  rmSync(path, { force: true });
  const r = results(out);
  const bytes = seqMiB * 1048576;
  const best = (key: string, word: string) => Math.max(...Array.from({ length: ROUNDS }, (_, i) => {
    const v = field(r, `${key}${i + 1}`, word, label);
    return word === "elapsed" ? bytes / v / 1e6 : v;
  }));
  const f: DiskFigures = {
    seqWriteMBs: best("seqwrite", "elapsed"),
    seqReadMBs: best("seqread", "elapsed"),
    randReadIops: best("randread", "iops"),
    randWriteIops: best("randwrite", "iops"),
  };
  log(`${label}: seq write ${f.seqWriteMBs.toFixed(1)} MB/s, seq read ${f.seqReadMBs.toFixed(1)} MB/s, ` +
    `rand read ${f.randReadIops.toFixed(0)} IOPS, rand write ${f.randWriteIops.toFixed(0)} IOPS (run ${((performance.now() - start) / 1000).toFixed(1)} s)`);
  return f;
}

/** Waits until PATH exists (a listening socket), or gives up. */
async function waitForFile(path: string, ms: number, stop: () => boolean): Promise<void> {
  const end = Date.now() + ms;
  while (!existsSync(path)) {
    if (stop() || Date.now() > end) throw new Error(`${path} never appeared`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A card on the Unix socket backend, both engines (QEMU: -netdev stream). */
function socketNet(role: "listen" | "connect", path: string, mac: string): { tsvisorArgs: string[]; qemuArgs: string[] } {
  return {
    tsvisorArgs: ["--net", `socket=${role}:${path}`],
    qemuArgs: ["-netdev", `stream,id=n0,server=${role === "listen" ? "on" : "off"},addr.type=unix,addr.path=${path}`, "-device", `virtio-net-device,netdev=n0,mac=${mac}`],
  };
}

async function netRun(engine: Engine, image: Image, helper: Uint8Array, netMiB: number): Promise<number> {
  const payload = randomBytes(netMiB << 20);
  const md5 = createHash("md5").update(payload).digest("hex");
  const sock = join(scratch, `${engine}-net.sock`);
  rmSync(sock, { force: true });
  const start = performance.now();
  let receiverDone = false;
  const receiver = runner.run({
    engine, script: receiverScript(rounds(), "md5sum < /tmp/r"), stdin: helper, mem: MEM, ...socketNet("listen", sock, "52:54:00:12:34:01"),
  }, image, `${engine} receiver`).finally(() => (receiverDone = true));
  receiver.catch(() => {}); // awaited below
  try {
    await waitForFile(sock, 30_000, () => receiverDone);
  } catch (e) {
    runner.stopAll();
    await receiver; // its own failure says more
    throw e;
  }
  const sender = runner.run({
    engine, script: senderScript(helper.length), stdin: Buffer.concat([helper, payload]), mem: MEM,
    ...socketNet("connect", sock, "52:54:00:12:34:02"),
  }, image, `${engine} sender`);
  // One side failing leaves the other waiting for its peer: stop it.
  let first: unknown;
  const both = [receiver, sender].map((p) => p.catch((e: unknown) => {
    first ??= e;
    runner.stopAll();
    return "";
  }));
  const [rOut, sOut] = await Promise.all(both);
  if (first !== undefined) throw first;
  const r = results(rOut);
  const s = results(sOut);
  let best = 0;
  for (let i = 1; i <= ROUNDS; i++) {
    const got = s.get(`send${i}`)?.md5;
    if (got !== md5) throw new Error(`${engine} network round ${i}: the receiver's md5 is ${got ?? "missing"}, the payload's ${md5}`);
    const bytes = field(r, `recv${i}`, "bytes", `${engine} receiver`);
    if (bytes !== payload.length) throw new Error(`${engine} network round ${i}: ${bytes} bytes received of ${payload.length}`);
    const mbs = bytes / field(r, `recv${i}`, "elapsed", `${engine} receiver`) / 1e6;
    log(`${engine} net round ${i}: ${mbs.toFixed(2)} MB/s (receiver), sender's end to end ${field(s, `send${i}`, "elapsed", `${engine} sender`).toFixed(2)} s, md5 ok`);
    best = Math.max(best, mbs);
  }
  log(`${engine} net: both VMs done in ${((performance.now() - start) / 1000).toFixed(1)} s`);
  return best;
}

// ---- report -----------------------------------------------------------------

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      "seq-mib": { type: "string", default: "128" },
      "rand-seconds": { type: "string", default: "3" },
      "net-mib": { type: "string", default: "16" },
      only: { type: "string" },
      "no-qemu": { type: "boolean", default: false },
      verbose: { type: "boolean", default: false },
    },
  });
  const seqMiB = Number(values["seq-mib"]);
  const randSeconds = Number(values["rand-seconds"]);
  const netMiB = Number(values["net-mib"]);
  if (!(Number.isInteger(seqMiB) && seqMiB >= 1 && seqMiB * ROUNDS <= DISK_MIB)) fail(`--seq-mib: 1..${DISK_MIB / ROUNDS} (${ROUNDS} rounds on a ${DISK_MIB} MiB disk)`);
  if (!(randSeconds > 0)) fail("--rand-seconds: a positive number");
  if (!(Number.isInteger(netMiB) && netMiB >= 1 && netMiB <= 100)) fail("--net-mib: 1..100 (the payload travels in the initrd)");
  if (values.only !== undefined && values.only !== "disk" && values.only !== "net") fail("--only: disk or net");
  let bench: GuestBench;
  try {
    bench = await prepareGuestBench("io", values["no-qemu"], values.verbose);
  } catch (e) {
    fail((e as Error).message);
  }
  const { helper, image, withQemu, engines } = bench;
  ({ scratch, runner } = bench);

  console.log(`virtio I/O inside the guest: Debian ${bench.kernelVersion} kernel, busybox initramfs, 1 hart, ${MEM}`);
  console.log(`host: ${hostCpus()[0]?.model ?? "unknown CPU"} x${hostCpus().length}, Node ${process.version}`);
  const rows: Row[] = [];
  try {
    if (values.only !== "net") {
      for (const format of ["raw", "qcow2"] as const) {
        const figs: Partial<Record<Engine, DiskFigures>> = {};
        for (const e of engines) figs[e] = await diskRun(e, format, image, helper, seqMiB, randSeconds);
        const ts = figs.tsvisor!;
        const q = figs.qemu;
        rows.push(
          { what: `${format} seq write ${seqMiB} MiB, 1M direct`, unit: "MB/s", ts: ts.seqWriteMBs, qemu: q?.seqWriteMBs },
          { what: `${format} seq read ${seqMiB} MiB, 1M direct`, unit: "MB/s", ts: ts.seqReadMBs, qemu: q?.seqReadMBs },
          { what: `${format} rand read 4K QD1, ${randSeconds} s`, unit: "IOPS", ts: ts.randReadIops, qemu: q?.randReadIops },
          { what: `${format} rand write 4K QD1, ${randSeconds} s`, unit: "IOPS", ts: ts.randWriteIops, qemu: q?.randWriteIops },
        );
      }
    }
    if (values.only !== "disk") {
      const figs: Partial<Record<Engine, number>> = {};
      for (const e of engines) figs[e] = await netRun(e, image, helper, netMiB);
      rows.push({ what: `net VM-to-VM TCP ${netMiB} MiB, nc`, unit: "MB/s", ts: figs.tsvisor!, qemu: figs.qemu });
    }
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }

  console.log("");
  printTable(rows, withQemu);
  console.log("");
  console.log("Times are taken inside the guest (CLOCK_MONOTONIC), boot excluded; MB/s = 10^6 bytes/s.");
  console.log(`Disk: vda on a ${DISK_MIB} MiB image, dd with O_DIRECT (write ends with fsync); random 4 KiB`);
  console.log("O_DIRECT pread/pwrite one at a time over the same span (writes end with fsync).");
  console.log("Net: two VMs on the Unix socket backend, busybox nc, receiver-side time, md5 checked.");
  console.log(`Each figure is the best of ${ROUNDS} rounds in one boot.`);
  if (withQemu) console.log("tsvisor/QEMU: below 1, QEMU TCG is faster (QEMU: -M virt, virtio-mmio, -netdev stream, cache=writeback).");
  else console.log(`QEMU: ${values["no-qemu"] ? "skipped (--no-qemu)" : `${QEMU} not installed (apt-get install qemu-system-misc)`}, no ratio`);
}

main().catch((e) => fail(e instanceof Error ? e.message : String(e)));
