// A virtio-fs queue's chains as FUSE requests (virtio 1.2, 5.11.6): each
// chain's device-readable part is one request (fuse_in_header, then its
// arguments), its device-writable part the room for the reply. The same
// code serves the queues on the main thread (device.ts, thread "main") and
// on the device's I/O thread (worker.ts).

import { ChainError, type VirtQueue, type DescriptorChain } from "../queue.js";
import { IN_HEADER_SIZE, Op } from "./fuse.js";
import { MAX_REQUEST, type FuseServer } from "./server.js";

/** The hiprio queue (queue 0) carries FORGET and BATCH_FORGET only (5.11.6.1). */
export const HIPRIO_QUEUE = 0;

/**
 * Answer every chain available on `q` (queue `index`) with `server`, until
 * the ring is empty or `stop()` says so (checked between requests: the one
 * in hand is finished). The caller calls q.notifyDriver() after, also when
 * this throws (QueueBroken: the rings are unusable).
 */
export function serveFuseQueue(server: FuseServer, q: VirtQueue, index: number, stop: () => boolean = () => false): void {
  while (!stop()) {
    const chain = q.pop();
    if (!chain) return;
    const req = requestOf(server, chain, index === HIPRIO_QUEUE);
    let len = 0;
    if (req) {
      const reply = server.handle(req, chain.writableLength);
      if (reply) len = writeReply(chain, reply);
    }
    q.push(chain, len);
  }
}

/** The request's bytes, or undefined for a chain not to be answered (counted as dropped). */
function requestOf(server: FuseServer, chain: DescriptorChain, hiprio: boolean): Uint8Array | undefined {
  try {
    if (chain.readableLength < IN_HEADER_SIZE) {
      server.stats.dropped++;
      return undefined;
    }
    let req: Uint8Array;
    if (chain.readableLength > MAX_REQUEST) {
      // Too long to be any request we serve: answered from its header alone, unread beyond it.
      req = chain.read(0, IN_HEADER_SIZE);
      new DataView(req.buffer).setUint32(0, 0xffff_ffff, true); // its len then lies: EINVAL
    } else {
      req = chain.read(0, chain.readableLength);
    }
    const opcode = new DataView(req.buffer, req.byteOffset).getUint32(4, true);
    if (hiprio && opcode !== Op.FORGET && opcode !== Op.BATCH_FORGET) {
      server.stats.dropped++;
      return undefined;
    }
    return req;
  } catch (e) {
    // Guest memory refused the buffers: this request fails, the queue goes on.
    if (e instanceof ChainError) return undefined;
    throw e;
  }
}

/** The reply into the chain's writable part: its length, or 0 when guest memory refuses it. */
function writeReply(chain: DescriptorChain, reply: Uint8Array): number {
  try {
    chain.write(0, reply);
    return reply.length;
  } catch (e) {
    if (e instanceof ChainError) return 0;
    throw e;
  }
}
