// The Firecracker-style Unix socket side of vsock, with the device driven by
// the test guest: CONNECT/OK, refusals, bad lines, PATH_P for guest
// connections, stale and busy socket files; and the --vsock spec.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { VirtioVsock } from "./device.js";
import { UnixVsockBackend } from "./unix-backend.js";
import { VsockGuest, GUEST_CID, concat, type RxPacket } from "./testing.js";
import { VSOCK_OP_REQUEST, VSOCK_OP_RESPONSE, VSOCK_OP_RST, VSOCK_OP_RW, VSOCK_OP_SHUTDOWN } from "./packet.js";
import { parseVsockSpec } from "../../../cli/vm-devices.js";

const dir = mkdtempSync(join(tmpdir(), "tsvisor-vsock-unix-"));
after(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;

async function setup() {
  const path = join(dir, `v${n++}.sock`);
  const backend = await UnixVsockBackend.open(path);
  const dev = new VirtioVsock({ guestCid: GUEST_CID, backend });
  const g = new VsockGuest(dev);
  return { path, dev, g };
}

/** Polls the guest until `want` packets arrived (host work is asynchronous). */
async function receiveUntil(g: VsockGuest, ok: (all: RxPacket[]) => boolean): Promise<RxPacket[]> {
  const all: RxPacket[] = [];
  for (let i = 0; i < 200; i++) {
    all.push(...g.receive());
    if (ok(all)) return all;
    await sleep(5);
  }
  assert.fail(`guest got ${JSON.stringify(all.map((p) => p.hdr.op))}`);
}

function readLine(s: net.Socket): Promise<string> {
  return new Promise((resolve) => {
    let buf = "";
    const on = (d: Buffer) => {
      buf += d.toString("latin1");
      const nl = buf.indexOf("\n");
      if (nl >= 0) {
        s.off("data", on);
        resolve(buf.slice(0, nl));
      }
    };
    s.on("data", on);
    s.on("close", () => resolve(buf));
  });
}

test("host connects: CONNECT 52 -> REQUEST to the guest; RESPONSE -> OK <port>; data both ways", async () => {
  const { path, dev, g } = await setup();
  try {
    const s = net.createConnection(path);
    s.write("CONNECT 52\nearly");
    const [req] = await receiveUntil(g, (a) => a.length >= 1);
    assert.equal(req.hdr.op, VSOCK_OP_REQUEST);
    assert.equal(req.hdr.dstPort, 52);
    const line = readLine(s);
    g.send({ op: VSOCK_OP_RESPONSE, srcPort: 52, dstPort: req.hdr.srcPort });
    assert.equal(await line, `OK ${req.hdr.srcPort}`);
    const data = await receiveUntil(g, (a) => concat(a.map((p) => p.payload)).length >= 5);
    assert.equal(Buffer.from(concat(data.map((p) => p.payload))).toString(), "early");
    const got: Buffer[] = [];
    s.on("data", (d) => got.push(d));
    g.send({ op: VSOCK_OP_RW, srcPort: 52, dstPort: req.hdr.srcPort }, new TextEncoder().encode("from guest"));
    for (let i = 0; i < 100 && Buffer.concat(got).toString() !== "from guest"; i++) await sleep(5);
    assert.equal(Buffer.concat(got).toString(), "from guest");
    s.end();
    const shut = await receiveUntil(g, (a) => a.some((p) => p.hdr.op === VSOCK_OP_SHUTDOWN));
    assert.ok(shut.some((p) => p.hdr.op === VSOCK_OP_SHUTDOWN));
  } finally {
    await dev.close();
  }
  assert.ok(!existsSync(path), "the socket file is removed at close");
});

test("host connects: the guest refuses (RST) -> the Unix connection closes; a bad line closes it at once", async () => {
  const { path, dev, g } = await setup();
  try {
    const s = net.createConnection(path);
    s.write("CONNECT 7\n");
    const [req] = await receiveUntil(g, (a) => a.length >= 1);
    const closed = new Promise((r) => s.on("close", r));
    const line = readLine(s);
    g.send({ op: VSOCK_OP_RST, srcPort: 7, dstPort: req.hdr.srcPort });
    await closed;
    assert.equal(await line, "");
    for (const bad of ["HELLO 52\n", "CONNECT\n", "CONNECT 99999999999\n", "x".repeat(100)]) {
      const b = net.createConnection(path);
      b.on("error", () => {});
      b.write(bad);
      await new Promise((r) => b.on("close", r));
    }
    assert.equal(dev.connectionCount, 0);
  } finally {
    await dev.close();
  }
});

test("guest connects to host port P: reaches PATH_P; nothing there -> RST", async () => {
  const { path, dev, g } = await setup();
  const got: Buffer[] = [];
  const server = net.createServer((s) => {
    s.on("data", (d) => got.push(d));
    s.write("hi guest");
  });
  await new Promise<void>((r) => server.listen(`${path}_1234`, r));
  try {
    g.send({ op: VSOCK_OP_REQUEST, srcPort: 5000, dstPort: 1234 });
    const r = await receiveUntil(g, (a) => concat(a.filter((p) => p.hdr.op === VSOCK_OP_RW).map((p) => p.payload)).length >= 8);
    assert.equal(r[0].hdr.op, VSOCK_OP_RESPONSE);
    g.send({ op: VSOCK_OP_RW, srcPort: 5000, dstPort: 1234 }, new TextEncoder().encode("hi host"));
    for (let i = 0; i < 100 && Buffer.concat(got).toString() !== "hi host"; i++) await sleep(5);
    assert.equal(Buffer.concat(got).toString(), "hi host");
    g.send({ op: VSOCK_OP_REQUEST, srcPort: 5001, dstPort: 4321 });
    const rst = await receiveUntil(g, (a) => a.some((p) => p.hdr.op === VSOCK_OP_RST));
    assert.equal(rst.find((p) => p.hdr.op === VSOCK_OP_RST)!.hdr.dstPort, 5001);
  } finally {
    server.close();
    await dev.close();
  }
});

test("the socket file: a stale one is replaced, a busy one or a regular file refused", async () => {
  const stale = join(dir, "stale.sock");
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(stale, r));
  await assert.rejects(UnixVsockBackend.open(stale), /in use/);
  await new Promise((r) => s.close(r));
  // A socket file nobody listens on (a killed process leaves one): bound, never listened on.
  const py = spawnSync("python3", ["-c", "import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])", stale]);
  assert.equal(py.status, 0, String(py.stderr));
  assert.ok(existsSync(stale));
  const b = await UnixVsockBackend.open(stale);
  await b.close();
  const file = join(dir, "file");
  writeFileSync(file, "x");
  await assert.rejects(UnixVsockBackend.open(file), /not a socket/);
});

test("--vsock PATH[,cid=N]: default CID 3; bad CIDs, options and long paths are one line", () => {
  assert.deepEqual(parseVsockSpec("/tmp/v.sock"), { path: "/tmp/v.sock", cid: 3 });
  assert.deepEqual(parseVsockSpec("/tmp/v.sock,cid=42"), { path: "/tmp/v.sock", cid: 42 });
  assert.throws(() => parseVsockSpec("/tmp/v.sock,cid=2"), /cid=2: expected 3\.\.4294967294/);
  assert.throws(() => parseVsockSpec("/tmp/v.sock,cid=x"), /cid=x/);
  assert.throws(() => parseVsockSpec("/tmp/v.sock,cid=4294967295"), /expected 3/);
  assert.throws(() => parseVsockSpec("/tmp/v.sock,port=1"), /unknown option 'port=1'/);
  assert.throws(() => parseVsockSpec(""), /expected PATH/);
  assert.throws(() => parseVsockSpec(`/tmp/${"x".repeat(100)}`), /longer than 96 bytes/);
});
