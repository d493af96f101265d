// The target's migration thread during post-copy (receiver.ts starts it):
// it owns the second connection, so pages keep arriving and requests keep
// going out while any other thread, the main thread too, sleeps in a fault
// on a page still at the source (remote-pages.ts). It listens on a port of
// its own for one connection that must first show the one-time key the
// target gave the source over the authenticated main connection; then it
// maps arriving pages into the VM's p2m (fillRemote), wakes the waiters, and
// forwards the pages they ask for as Fetch messages. It tells the main
// thread "done" once the source has sent everything and no page is Remote,
// or "failed" with the reason (the guest cannot go on: it is lost).
//
// workerData: { pool, p2m, remote, host, key (base64) }

import { parentPort, workerData } from "node:worker_threads";
import type { Socket } from "node:net";
import { timingSafeEqual } from "node:crypto";
import { FramePool, type FramePoolHandle } from "../../memory/frame-pool.js";
import { P2m, type P2mHandle } from "../../memory/p2m.js";
import { Absent, absentKind, isPresent } from "../../memory/p2m-entry.js";
import { RemotePages, type RemotePagesHandle } from "./remote-pages.js";
import { Cmd, MessageReader, MessageWriter, MigrationError, createMigrationServer, expect, fillRemotePages, readJson } from "./stream.js";

export interface PostcopyWorkerData {
  pool: FramePoolHandle;
  p2m: P2mHandle;
  remote: RemotePagesHandle;
  host: string;
  key: string;
  /** TLS with the key as its pre-shared key (the main connection was TLS too). */
  tls: boolean;
}

export type FromPostcopyWorker = { kind: "listening"; port: number } | { kind: "done"; pages: number } | { kind: "failed"; reason: string };

const d = workerData as PostcopyWorkerData;
const pool = FramePool.attach(d.pool);
const p2m = P2m.attach(pool, d.p2m);
const remote = RemotePages.attach(d.remote);
const post = (m: FromPostcopyWorker) => parentPort!.postMessage(m);
let finished = false;

// A handshake refused (not the source) is not the one connection: it waits on for the source's.
const server = createMigrationServer(d.tls ? Buffer.from(d.key, "base64") : undefined, (s) => {
  server.close(); // one connection only
  void serve(s);
}, () => {});
server.listen(0, d.host, () => {
  const a = server.address();
  post({ kind: "listening", port: typeof a === "object" && a ? a.port : 0 });
});

function remoteLeft(): number {
  let n = 0;
  for (let i = 0; i < p2m.count; i++) {
    const e = p2m.entry(i);
    if (!isPresent(e) && absentKind(e) === Absent.Remote) n++;
  }
  return n;
}

function fail(reason: string): void {
  if (finished) return;
  finished = true;
  remote.fail(reason);
  post({ kind: "failed", reason });
}

async function serve(socket: Socket): Promise<void> {
  socket.setNoDelay(true);
  const reader = new MessageReader(socket, "the source");
  const writer = new MessageWriter(socket, "the source");
  let mapped = 0;
  try {
    const hello = readJson(expect(await reader.next(30_000, "its key"), Cmd.Hello, "the source"), "the source");
    const key = hello.bytes("key", 64);
    const want = Buffer.from(d.key, "base64");
    if (key.length !== want.length || !timingSafeEqual(key, want)) throw new MigrationError("the post-copy connection showed a wrong key");
    await writer.json(Cmd.Ack, {});
    void pumpRequests(writer);
    for (;;) {
      // No timeout: the guest may not touch a missing page for long, and the source pushes all anyway.
      const m = expect(await reader.next(3_600_000, "pages"), Cmd.Memory, "the source");
      const r = fillRemotePages(p2m, m.payload);
      mapped += r.mapped;
      if (r.mapped > 0) remote.arrived();
      if (r.count === 0) break;
    }
    const left = remoteLeft();
    if (left > 0) throw new MigrationError(`the source sent all it had and ${left} pages are still missing`);
    await writer.json(Cmd.Ack, {});
    finished = true;
    post({ kind: "done", pages: mapped });
    socket.end();
  } catch (e) {
    fail((e as Error).message.replace(/\s+/g, " "));
    socket.destroy();
  }
}

/** Forward the pages threads wait for, as they ask. */
async function pumpRequests(writer: MessageWriter): Promise<void> {
  while (!finished) {
    await remote.doorbell();
    const wanted = remote.takeRequests().filter((i) => i >= 0 && i < p2m.count);
    if (process.env.TSVISOR_MIGRATION_TRACE === "1") process.stderr.write(`postcopy: ${wanted.length} pages asked for\n`);
    if (wanted.length === 0) continue;
    for (let k = 0; k < wanted.length; k += 1024) {
      const part = wanted.slice(k, k + 1024);
      const b = Buffer.alloc(4 + 4 * part.length);
      b.writeUInt32LE(part.length, 0);
      part.forEach((i, n) => b.writeUInt32LE(i, 4 + 4 * n));
      try {
        await writer.send(Cmd.Fetch, b);
      } catch {
        return; // the reader sees the connection end
      }
    }
  }
}
