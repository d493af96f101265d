// Two backends in one process over a Unix socket: frames both ways, a
// listener that appears late, peers that go and come back, a hostile peer,
// a peer that stops reading, and receive pausing.

import { test, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, existsSync, writeFileSync } from "node:fs";
import { spawn } from "node:child_process";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openNetBackend, parseNetSpec, type NetBackend, type OpenOptions } from "./net-backend.js";
import { FrameSink, frameTag, sameBytes, testFrame, waitFor } from "./testing.js";

const dir = mkdtempSync(join(tmpdir(), "tsvisor-net-"));
after(() => rmSync(dir, { recursive: true, force: true }));
let serial = 0;
const freshPath = () => join(dir, `s${serial++}.sock`);

/** Backends a test opened, closed after it whatever its outcome (an open one keeps the process alive). */
const opened: NetBackend[] = [];
afterEach(() => {
  for (const b of opened.splice(0)) b.close();
});

async function open(mode: "listen" | "connect", path: string, opts: OpenOptions = {}): Promise<NetBackend> {
  const backend = await openNetBackend(parseNetSpec(`socket=${mode}:${path}`), opts);
  opened.push(backend);
  return backend;
}

/**
 * Sends a frame tagged `tag` until `to` has it (a fresh connection may not be
 * attached on both sides yet), then forgets what `to` received. Tags of later
 * checks are above those of exchanges, as a late duplicate may still arrive.
 */
async function exchange(from: NetBackend, to: FrameSink, tag: number): Promise<void> {
  const frame = testFrame(1, tag, 100 + tag);
  await waitFor(`frame ${tag} to arrive`, () => {
    from.send(frame);
    return to.frames.some((f) => frameTag(f) === tag);
  });
  const got = await to.next((f) => frameTag(f) === tag);
  assert.ok(sameBytes(got, frame));
  to.frames.length = 0;
}

test("listen and connect exchange frames both ways, bytes intact", async () => {
  const path = freshPath();
  const server = await open("listen", path);
  const client = await open("connect", path);
  const atServer = new FrameSink(server);
  const atClient = new FrameSink(client);
  await exchange(client, atServer, 1);
  const big = testFrame(2, 2, 65000);
  server.send(big);
  assert.ok(sameBytes(await atClient.next(), big));
  for (let i = 10; i < 110; i++) client.send(testFrame(3, i, 60 + i));
  for (let i = 10; i < 110; i++) assert.equal(frameTag(await atServer.next((f) => frameTag(f) >= 10)), i, "in order");
  assert.ok(client.stats.txFrames >= 101 && server.stats.rxFrames >= 101);
  assert.equal(server.stats.txFrames, 1);
  assert.equal(client.stats.rxBytes, 65000);
  client.close();
  server.close();
  assert.equal(existsSync(path), false, "the listener removes its socket file");
});

test("connect waits for a listener that starts late; frames sent before are dropped and counted", async () => {
  const path = freshPath();
  const client = await open("connect", path);
  client.send(testFrame(1, 1));
  assert.equal(client.stats.txDropped, 1);
  await new Promise((r) => setTimeout(r, 200));
  const server = await open("listen", path);
  server.send(testFrame(2, 2));
  const atServer = new FrameSink(server);
  await exchange(client, atServer, 3);
  client.close();
  server.close();
});

test("a new peer replaces one that left; connect reconnects when the listener comes back", async () => {
  const path = freshPath();
  const server = await open("listen", path);
  const atServer = new FrameSink(server);
  const first = await open("connect", path);
  await exchange(first, atServer, 1);
  first.close();
  const second = await open("connect", path);
  const atSecond = new FrameSink(second);
  await exchange(second, atServer, 2);
  await exchange(server, atSecond, 3);

  server.close(); // the listener goes away (a VM restarts) ...
  const again = await open("listen", path); // ... and comes back at the same path
  const atAgain = new FrameSink(again);
  await exchange(second, atAgain, 4);
  await exchange(again, atSecond, 5);
  second.close();
  again.close();
});

test("a hostile peer announcing a huge frame is cut off; the next peer is served", async () => {
  const path = freshPath();
  const warnings: string[] = [];
  const server = await open("listen", path, { warn: (l) => warnings.push(l) });
  const atServer = new FrameSink(server);
  for (const header of [Buffer.from([0xff, 0xff, 0xff, 0xff]), Buffer.from([0, 0, 0, 0])]) {
    const hostile = connect(path);
    await new Promise((r) => hostile.once("connect", r));
    hostile.write(header);
    await new Promise((r) => hostile.once("close", r));
  }
  assert.equal(warnings.length, 2);
  assert.match(warnings[0], /^socket:listen:.*: peer cut off: bad frame length 4294967295/);
  assert.match(warnings[1], /bad frame length 0/);
  const good = await open("connect", path);
  await exchange(good, atServer, 1);
  assert.equal(atServer.frames.length, 0);
  good.close();
  server.close();
});

test("while a peer is connected, a second one is turned away", async () => {
  const path = freshPath();
  const server = await open("listen", path);
  const atServer = new FrameSink(server);
  const peer = await open("connect", path);
  await exchange(peer, atServer, 1);
  const intruder = connect(path);
  await new Promise((r) => intruder.once("close", r));
  await exchange(peer, atServer, 2);
  peer.close();
  server.close();
});

test("listen replaces a stale socket file but never a live listener or another file", async () => {
  const path = freshPath();
  // A listener in another process that gets killed leaves its socket file behind.
  const script = "require('net').createServer().listen(process.argv[1], () => console.log('up'))";
  const other = spawn(process.execPath, ["-e", script, path], { stdio: ["ignore", "pipe", "inherit"] });
  await new Promise((r) => other.stdout.once("data", r));
  await assert.rejects(open("listen", path), /another program is listening/);
  other.kill("SIGKILL");
  await new Promise((r) => other.once("exit", r));
  assert.ok(existsSync(path), "a stale socket file");
  const server = await open("listen", path);
  server.close();
  const regular = freshPath();
  writeFileSync(regular, "data");
  await assert.rejects(open("listen", regular), /exists and is not a socket/);
});

test("a peer that stops reading: the send queue stays bounded, the excess is dropped and counted", async () => {
  const path = freshPath();
  const server = await open("listen", path);
  const sleeper: Socket = connect(path);
  await new Promise((r) => sleeper.once("connect", r));
  sleeper.pause();
  await new Promise((r) => setTimeout(r, 50));
  for (let i = 0; i < 200; i++) server.send(testFrame(1, i, 60000));
  assert.ok(server.stats.txDropped > 100, `dropped ${server.stats.txDropped}`);
  assert.ok(server.stats.txBytes < 4 * 1024 * 1024, `queued ${server.stats.txBytes}`);
  sleeper.destroy();
  server.close();
});

test("pausing receive holds frames back; resuming delivers them in order", async () => {
  const path = freshPath();
  const server = await open("listen", path);
  const client = await open("connect", path);
  const atServer = new FrameSink(server);
  await exchange(client, atServer, 1);
  server.setRxPaused(true);
  const held = (f: Uint8Array) => frameTag(f) >= 100;
  for (let i = 0; i < 50; i++) client.send(testFrame(1, 100 + i, 1000));
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(atServer.frames.filter(held).length, 0);
  server.setRxPaused(false);
  for (let i = 0; i < 50; i++) assert.equal(frameTag(await atServer.next(held)), 100 + i);
  client.close();
  server.close();
});

test("connect gives up after its retry window with one warning", async () => {
  const warnings: string[] = [];
  const client = await open("connect", freshPath(), { warn: (l) => warnings.push(l), connectRetryMs: 150 });
  await waitFor("the warning", () => warnings.length > 0);
  assert.match(warnings[0], /nobody listens after .*ENOENT.*giving up/);
  client.send(testFrame(1, 1));
  assert.equal(client.stats.txDropped, 1);
  client.close();
});
