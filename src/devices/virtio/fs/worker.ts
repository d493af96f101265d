// The I/O thread of a virtio-fs device (device.ts, thread "worker"): it owns
// the FuseServer, so every host file call (open, read, fsync, readdir...)
// blocks this thread, never the main one. Requests come in order as bytes and
// go back in order as bytes; guest memory stays with the main thread.
//
//   main -> worker   { kind: "req", id, req, outRoom }   one request
//                    { kind: "reset" }                   device reset: nodes and handles go
//                    { kind: "close" }                   close every fd, then exit
//   worker -> main   { kind: "reply", id, reply?, stats } in the order of the requests
//                    { kind: "closed" }

import { parentPort, workerData } from "node:worker_threads";
import { FuseServer } from "./server.js";

export type ToWorker = { kind: "req"; id: number; req: Uint8Array; outRoom: number } | { kind: "reset" } | { kind: "close" };
export type FromWorker =
  | { kind: "reply"; id: number; reply?: Uint8Array; stats: FuseServer["stats"] & { nodes: number; handles: number } }
  | { kind: "closed" };

const { hostDir, readOnly, umask } = workerData as { hostDir: string; readOnly: boolean; umask: number };
const server = new FuseServer(hostDir, readOnly, umask);
const port = parentPort!;

port.on("message", (m: ToWorker) => {
  switch (m.kind) {
    case "req": {
      let reply: Uint8Array | undefined;
      try {
        reply = server.handle(m.req, m.outRoom);
      } catch {
        reply = undefined; // handle() does not throw; should it all the same, the request goes unanswered, the thread stays
      }
      const msg: FromWorker = { kind: "reply", id: m.id, reply, stats: { ...server.stats, nodes: server.fs.nodeCount, handles: server.fs.handleCount } };
      port.postMessage(msg, reply ? [reply.buffer as ArrayBuffer] : []);
      return;
    }
    case "reset":
      server.reset();
      return;
    case "close":
      server.close();
      port.postMessage({ kind: "closed" } satisfies FromWorker);
      port.close();
      return;
  }
});
