// Network benchmark: throughput and latency on each of tsvisor's network paths,
// measured inside the stock Debian guest (1 hart, 256 MiB), next to QEMU's TCG
// on the closest path it has, in the same run:
//
//   path                     tsvisor                              QEMU TCG
//   VM -> host, NAT          --net user (DHCP, 10.0.2.2 = host)   -netdev user (slirp)
//   VM <-> VM, one host      two VMs on --net switch=NAME         two VMs on -netdev stream (socket)
//                            (a host daemon runs both)
//   VM <-> VM, tunnel        two hosts joined by --net            two VMs on -netdev dgram (UDP)
//                            switch=..,vxlan=VNI,remote= (UDP)
//
// NAT: the guest downloads N MiB from a web server on the host's loopback
// with busybox wget (and uploads N MiB with --post-file), timed by the guest
// (bench/programs/iobench.c `time`), and fetches a small page 20 times in a
// row: the mean is a request's round trip, connection setup included.
// VM to VM: the sender pipes N MiB into busybox nc, the receiver times the
// stream from accept to end; then 20 pings give the round trip.
// Each figure is the best of two rounds in one boot. Figures only, no
// assertions. Traffic stays on 127.0.0.1.
//
//   npm run bench:net
//   node dist/bench/net.js --mib 16 --only nat|switch|vxlan --no-qemu --verbose

import { spawn, spawnSync } from "node:child_process";
import { rmSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { createSocket } from "node:dgram";
import { cpus as hostCpus } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { GuestRunner, PAIR, bin, field, log, prelude, prepareGuestBench, printTable, receiverScript, results, type Engine, type GuestBench, type Image, type Row } from "./guest-run.js";

const MEM = "256M";
const ROUNDS = 2;
const rounds = () => Array.from({ length: ROUNDS }, (_, i) => i + 1).join(" ");
const PAGES = 20;

function fail(message: string): never {
  process.stderr.write(`bench:net: ${message}\n`);
  process.exit(1);
}

let runner: GuestRunner;
let scratch = "";

// ---- NAT: VM to host --------------------------------------------------------

interface NatFigures {
  downMBs: number;
  upMBs: number;
  requestMs: number;
}

async function natRun(engine: Engine, image: Image, helper: Uint8Array, mib: number): Promise<NatFigures> {
  const blob = Buffer.alloc(mib << 20, 0x5a);
  let uploaded = 0;
  const server = createServer((req, res) => {
    if (req.url === "/blob") res.end(blob);
    else if (req.url === "/up") {
      req.on("data", (d: Buffer) => (uploaded += d.length));
      req.on("end", () => res.end("ok\n"));
    } else res.end("hello\n");
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as AddressInfo).port;
  const url = `http://10.0.2.2:${port}`;
  const script = `${prelude("cat /tsvisor/stdin > /tmp/p")}
settle
yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c ${mib << 20} > /tmp/up  # busybox wget posts a file as a string: no NULs
for i in ${rounds()}; do
  /tmp/p time wget -q -O /dev/null ${url}/blob 2>/tmp/t || fail download
  echo "BENCH down$i $(grep ^elapsed /tmp/t)"
  /tmp/p time wget -q -O /dev/null --post-file=/tmp/up ${url}/up 2>/tmp/t || fail upload
  echo "BENCH up$i $(grep ^elapsed /tmp/t)"
  /tmp/p time sh -c 'for n in $(seq ${PAGES}); do wget -q -O /dev/null ${url}/page || exit 1; done' 2>/tmp/t || fail page
  echo "BENCH page$i $(grep ^elapsed /tmp/t)"
done
`;
  try {
    const out = await runner.run({
      engine, script, stdin: helper, mem: MEM, append: "tsvisor.dhcp=eth0",
      tsvisorArgs: ["--net", "user"],
      qemuArgs: ["-netdev", "user,id=n0", "-device", "virtio-net-device,netdev=n0,mac=52:54:00:12:34:56"],
    }, image, `${engine} nat`);
    const r = results(out);
    const best = (key: string, f: (s: number) => number) => Math.max(...[1, 2].map((i) => f(field(r, `${key}${i}`, "elapsed", `${engine} nat`))));
    const bytes = mib << 20;
    if (uploaded !== bytes * ROUNDS) throw new Error(`${engine} nat: the host received ${uploaded} bytes of ${bytes * ROUNDS}`);
    const figs = { downMBs: best("down", (s) => bytes / s / 1e6), upMBs: best("up", (s) => bytes / s / 1e6), requestMs: 1 / best("page", (s) => 1 / ((s * 1000) / PAGES)) };
    log(`${engine} nat: down ${figs.downMBs.toFixed(2)} MB/s, up ${figs.upMBs.toFixed(2)} MB/s, request ${figs.requestMs.toFixed(1)} ms`);
    return figs;
  } finally {
    server.close();
  }
}

// ---- VM to VM ---------------------------------------------------------------

const { receiverIp: RECEIVER_IP, senderIp: SENDER_IP, port: PORT } = PAIR;
/** The receiver answers with the byte count, and a last connection tells it the sender is done. */
const countingReceiver = () => receiverScript(rounds(), "wc -c < /tmp/r", `nc -l -p ${PORT} -e true\n`);

function senderScript(mib: number): string {
  return `${prelude("cat /tsvisor/stdin > /tmp/p")}
dd if=/dev/zero of=/tmp/payload bs=1M count=${mib} 2>/dev/null
ifconfig eth0 ${SENDER_IP} netmask 255.255.255.0 up || fail ifconfig
settle
n=0; until ping -c 1 -W 1 ${RECEIVER_IP} >/dev/null 2>&1; do n=$((n+1)); [ $n -lt 300 ] || fail ping; done
for i in ${rounds()}; do
  n=0
  until nc ${RECEIVER_IP} ${PORT} < /tmp/payload > /tmp/n && [ -s /tmp/n ]; do
    n=$((n+1)); [ $n -lt 300 ] || fail nc-connect; sleep 0.2
  done
  echo "BENCH rtt$i $(ping -c ${PAGES} -i 0.2 ${RECEIVER_IP} | awk -F/ '/avg/ {print "ms", $4}')"
done
n=0; until nc ${RECEIVER_IP} ${PORT} < /dev/null; do n=$((n+1)); [ $n -lt 50 ] || break; sleep 0.2; done
`;
}

interface PairFigures {
  mbs: number;
  rttMs: number;
}

/** Two guests, each on its own network spec; the receiver's times and the sender's pings. */
async function pairRun(label: string, image: Image, helper: Uint8Array, mib: number,
  receiver: { engine: Engine; tsvisorArgs: string[]; qemuArgs: string[] }, sender: typeof receiver,
  startReceiver: (run: () => Promise<string>) => Promise<string> = (run) => run()): Promise<PairFigures> {
  const rx = startReceiver(() => runner.run({ ...receiver, script: countingReceiver(), stdin: helper, mem: MEM }, image, `${label} receiver`));
  // The receiver is up (its socket listens) before the sender connects; a tunnel needs no order.
  await new Promise((r) => setTimeout(r, 300));
  const tx = runner.run({ ...sender, script: senderScript(mib), stdin: helper, mem: MEM }, image, `${label} sender`);
  let first: unknown;
  const [rOut, sOut] = await Promise.all([rx, tx].map((p) => p.catch((e: unknown) => {
    first ??= e;
    runner.stopAll();
    return "";
  })));
  if (first !== undefined) throw first;
  const r = results(rOut);
  const s = results(sOut);
  let mbs = 0;
  let rtt = Infinity;
  for (let i = 1; i <= ROUNDS; i++) {
    const bytes = field(r, `recv${i}`, "bytes", `${label} receiver`);
    if (bytes !== mib << 20) throw new Error(`${label} round ${i}: ${bytes} bytes received of ${mib << 20}`);
    mbs = Math.max(mbs, bytes / field(r, `recv${i}`, "elapsed", `${label} receiver`) / 1e6);
    rtt = Math.min(rtt, field(s, `rtt${i}`, "ms", `${label} sender`));
  }
  log(`${label}: ${mbs.toFixed(2)} MB/s, ping ${rtt.toFixed(2)} ms`);
  return { mbs, rttMs: rtt };
}

/** A free UDP port on 127.0.0.1. */
async function freeUdpPort(): Promise<number> {
  const s = createSocket("udp4");
  await new Promise<void>((r) => s.bind(0, "127.0.0.1", r));
  const port = s.address().port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

const qemuNic = (mac: string) => ["-device", `virtio-net-device,netdev=n0,mac=${mac}`];

/** VM to VM on one host. tsvisor: both VMs in one host daemon on switch `lan`; QEMU: a stream socket. */
async function switchRun(engine: Engine, image: Image, helper: Uint8Array, mib: number): Promise<PairFigures> {
  if (engine === "qemu") {
    const sock = join(scratch, "qemu-stream.sock");
    return pairRun("qemu stream", image, helper, mib,
      { engine, tsvisorArgs: [], qemuArgs: ["-netdev", `stream,id=n0,server=on,addr.type=unix,addr.path=${sock}`, ...qemuNic("52:54:00:12:34:01")] },
      { engine, tsvisorArgs: [], qemuArgs: ["-netdev", `stream,id=n0,server=off,addr.type=unix,addr.path=${sock}`, ...qemuNic("52:54:00:12:34:02")] });
  }
  return daemonPair(image, helper, mib);
}

/** Two VMs of one `tsvisor host` on switch `lan`; the figures from their logs. */
async function daemonPair(image: Image, helper: Uint8Array, mib: number): Promise<PairFigures> {
  const socket = join(scratch, "host.sock");
  const daemon = spawn(process.execPath, [bin, "host", "--socket", socket, "--state-dir", join(scratch, "state"), "--mem", "1G"], { stdio: ["ignore", "ignore", "pipe"] });
  let daemonErr = "";
  daemon.stderr.on("data", (d) => (daemonErr += d));
  const vm = (...args: string[]) => {
    const dashes = args.indexOf("--");
    const withHost = dashes < 0 ? [...args, "--host", socket] : [...args.slice(0, dashes), "--host", socket, ...args.slice(dashes)];
    const r = spawnSync(process.execPath, [bin, "vm", ...withHost], { encoding: "utf8", maxBuffer: 64 << 20 });
    if (r.status !== 0 && args[0] !== "wait") throw new Error(`tsvisor vm ${args.join(" ")}: ${r.stderr.trim()}\n${daemonErr}`);
    return r.stdout;
  };
  try {
    for (let i = 0; i < 100 && spawnSync(process.execPath, [bin, "vm", "ls", "--host", socket]).status !== 0; i++) await new Promise((r) => setTimeout(r, 100));
    // A daemon's VM has no stdin file to carry the timing helper: these scripts time with the guest's /proc/uptime.
    const rx = uptimeTimed(countingReceiver());
    const tx = uptimeTimed(senderScript(mib));
    vm("create", "rx", "--mem", MEM, "--console", "hvc0", "--net", "switch=lan,mac=52:54:00:12:34:01", "--", "sh", "-c", rx);
    vm("create", "tx", "--mem", MEM, "--console", "hvc0", "--net", "switch=lan,mac=52:54:00:12:34:02", "--", "sh", "-c", tx);
    vm("start", "rx");
    await new Promise((r) => setTimeout(r, 300));
    vm("start", "tx");
    await Promise.all(["rx", "tx"].map((n) => new Promise<void>((resolve) => {
      const w = spawn(process.execPath, [bin, "vm", "wait", n, "--host", socket], { stdio: "ignore" });
      w.on("close", () => resolve());
    })));
    const r = results(vm("logs", "rx"));
    const s = results(vm("logs", "tx"));
    let mbs = 0;
    let rtt = Infinity;
    for (let i = 1; i <= ROUNDS; i++) {
      const bytes = field(r, `recv${i}`, "bytes", "tsvisor switch receiver");
      if (bytes !== mib << 20) throw new Error(`tsvisor switch round ${i}: ${bytes} bytes received of ${mib << 20}`);
      mbs = Math.max(mbs, bytes / field(r, `recv${i}`, "elapsed", "tsvisor switch receiver") / 1e6);
      rtt = Math.min(rtt, field(s, `rtt${i}`, "ms", "tsvisor switch sender"));
    }
    log(`tsvisor switch: ${mbs.toFixed(2)} MB/s, ping ${rtt.toFixed(2)} ms`);
    return { mbs, rttMs: rtt };
  } finally {
    daemon.kill("SIGTERM");
    await new Promise((r) => daemon.on("close", r));
  }
}

/** A script without the stdin helper: /tmp/p becomes a shell script that times by /proc/uptime (10 ms steps). */
function uptimeTimed(script: string): string {
  const timer = `cat > /tmp/p <<'EOF'
#!/bin/sh
shift
a=$(cut -d' ' -f1 /proc/uptime); "$@"; s=$?; b=$(cut -d' ' -f1 /proc/uptime)
echo "elapsed $(echo "$b $a" | awk '{printf "%.2f", $1 - $2}')" >&2
exit $s
EOF
`;
  return script.replace(/^cat \/tsvisor\/stdin > \/tmp\/p\n/, timer);
}

/** VM to VM through a tunnel: tsvisor's VXLAN between two processes; QEMU's UDP socket backend. */
async function tunnelRun(engine: Engine, image: Image, helper: Uint8Array, mib: number): Promise<PairFigures> {
  const [a, b] = [await freeUdpPort(), await freeUdpPort()];
  const vx = (local: number, remote: number, mac: string) => ["--net", `switch=vx,vxlan=42,local=127.0.0.1:${local},remote=127.0.0.1:${remote},mac=${mac}`];
  const dgram = (local: number, remote: number, mac: string) =>
    ["-netdev", `dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port=${local},remote.type=inet,remote.host=127.0.0.1,remote.port=${remote}`, ...qemuNic(mac)];
  return pairRun(`${engine} ${engine === "tsvisor" ? "vxlan" : "dgram"}`, image, helper, mib,
    { engine, tsvisorArgs: vx(a, b, "52:54:00:12:34:01"), qemuArgs: dgram(a, b, "52:54:00:12:34:01") },
    { engine, tsvisorArgs: vx(b, a, "52:54:00:12:34:02"), qemuArgs: dgram(b, a, "52:54:00:12:34:02") });
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      mib: { type: "string", default: "16" },
      only: { type: "string" },
      "no-qemu": { type: "boolean", default: false },
      verbose: { type: "boolean", default: false },
    },
  });
  const mib = Number(values.mib);
  if (!(Number.isInteger(mib) && mib >= 1 && mib <= 64)) fail("--mib: 1..64 (the guest keeps the payload in tmpfs)");
  const only = values.only;
  if (only !== undefined && !["nat", "switch", "vxlan"].includes(only)) fail("--only: nat, switch or vxlan");
  let bench: GuestBench;
  try {
    bench = await prepareGuestBench("net", values["no-qemu"], values.verbose);
  } catch (e) {
    fail((e as Error).message);
  }
  const { helper, image, withQemu, engines } = bench;
  ({ scratch, runner } = bench);

  console.log(`network inside the guest: Debian ${bench.kernelVersion} kernel, busybox initramfs, 1 hart, ${MEM}, ${mib} MiB transfers`);
  console.log(`host: ${hostCpus()[0]?.model ?? "unknown CPU"} x${hostCpus().length}, Node ${process.version}, ${new Date().toISOString().slice(0, 10)}`);
  const rows: Row[] = [];
  try {
    if (!only || only === "nat") {
      const f: Partial<Record<Engine, NatFigures>> = {};
      for (const e of engines) f[e] = await natRun(e, image, helper, mib);
      rows.push(
        { what: `NAT VM->host download ${mib} MiB, wget`, unit: "MB/s", ts: f.tsvisor!.downMBs, qemu: f.qemu?.downMBs },
        { what: `NAT VM->host upload ${mib} MiB, wget`, unit: "MB/s", ts: f.tsvisor!.upMBs, qemu: f.qemu?.upMBs },
        { what: "NAT HTTP request, new connection each", unit: "ms", ts: f.tsvisor!.requestMs, qemu: f.qemu?.requestMs, lowerIsBetter: true },
      );
    }
    if (!only || only === "switch") {
      const f: Partial<Record<Engine, PairFigures>> = {};
      for (const e of engines) f[e] = await switchRun(e, image, helper, mib);
      rows.push(
        { what: `VM-to-VM switch (QEMU: stream) ${mib} MiB, nc`, unit: "MB/s", ts: f.tsvisor!.mbs, qemu: f.qemu?.mbs },
        { what: "VM-to-VM switch (QEMU: stream) ping", unit: "ms", ts: f.tsvisor!.rttMs, qemu: f.qemu?.rttMs, lowerIsBetter: true },
      );
    }
    if (!only || only === "vxlan") {
      const f: Partial<Record<Engine, PairFigures>> = {};
      for (const e of engines) f[e] = await tunnelRun(e, image, helper, mib);
      rows.push(
        { what: `VM-to-VM VXLAN (QEMU: dgram) ${mib} MiB, nc`, unit: "MB/s", ts: f.tsvisor!.mbs, qemu: f.qemu?.mbs },
        { what: "VM-to-VM VXLAN (QEMU: dgram) ping", unit: "ms", ts: f.tsvisor!.rttMs, qemu: f.qemu?.rttMs, lowerIsBetter: true },
      );
    }
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
  console.log("");
  printTable(rows, withQemu);
  console.log("");
  console.log("Times are taken inside the guest; MB/s = 10^6 bytes/s; best of 2 rounds in one boot.");
  console.log("tsvisor/QEMU above 1: tsvisor is faster (for ms rows the ratio is QEMU/tsvisor).");
  if (!withQemu) console.log(`QEMU: ${values["no-qemu"] ? "skipped (--no-qemu)" : "qemu-system-riscv64 not installed (apt-get install qemu-system-misc)"}, no ratio`);
}

main().catch((e) => fail(e instanceof Error ? e.message : String(e)));
