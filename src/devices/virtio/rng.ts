// virtio-rng, the entropy device (virtio 1.2, 5.4): one queue of device-writable
// buffers that the device fills with random bytes from the host's
// cryptographic random source (node:crypto, the kernel's getrandom()). No
// feature bits, no configuration space. The guest sees it as
// /dev/hwrng and feeds its own entropy pool from it.

import { randomFillSync } from "node:crypto";
import type { VirtioDevice, VirtioContext } from "./virtio.js";
import { VIRTIO_ID_RNG } from "./virtio.js";
import { ChainError, checkNoneInFlight, type VirtQueue } from "./queue.js";
import type { Plain, StateReader } from "../../snapshot/state.js";

/** At most this much per request, so a guest asking for gigabytes gets it in pieces. */
const MAX_REQUEST_BYTES = 64 * 1024;

export class VirtioRng implements VirtioDevice {
  readonly deviceId = VIRTIO_ID_RNG;
  readonly queueMaxSizes = [64];
  readonly features = 0n;
  /** The transport's live queues (activate()): looked up at each notify, never kept. */
  private queues: readonly (VirtQueue | undefined)[] = [];

  constructor(readonly name = "rng0") {}

  readConfig(): number {
    return 0;
  }

  writeConfig(): void {}

  activate(_ctx: VirtioContext, queues: readonly (VirtQueue | undefined)[]): void {
    this.queues = queues;
  }

  notify(): void {
    const q = this.queues[0];
    if (!q) return;
    try {
      for (let chain = q.pop(); chain; chain = q.pop()) {
        const n = Math.min(chain.writableLength, MAX_REQUEST_BYTES);
        let written = n;
        try {
          if (n > 0) chain.write(0, randomFillSync(new Uint8Array(n)));
        } catch (e) {
          // Guest memory refused the buffer: this request gets nothing, the next ones go on (2.7.8: len is what was written).
          if (!(e instanceof ChainError)) throw e;
          written = 0;
        }
        q.push(chain, written);
      }
    } finally {
      q.notifyDriver();
    }
  }

  reset(): void {
    this.queues = [];
  }

  /** Nothing of its own: every request is completed within its notify. */
  saveState(): Plain {
    return {};
  }

  restoreState(r: StateReader): void {
    checkNoneInFlight(r, this.queues[0]);
  }
}
