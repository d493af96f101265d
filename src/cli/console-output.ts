// The guest console's path to the host terminal or pipe.
//
// Guest output is written synchronously with fs.writeSync, because the run
// loop is synchronous: an asynchronous stream would report a closed pipe only
// after the guest finished, so `tsvisor run ... | head` with a chatty guest
// would never end. writeSync reports EPIPE at once, as OutputClosed. Node
// makes stdout non-blocking once process.stdout is touched, so a full pipe
// gives EAGAIN: wait a millisecond and retry (the reader is just slow).

import { writeSync } from "node:fs";

/** The reader of our output went away (EPIPE). */
export class OutputClosed extends Error {
  override readonly name = "OutputClosed";
  constructor() {
    super("output closed by its reader");
  }
}

const sleeper = new Int32Array(new SharedArrayBuffer(4));

export function writeAllSync(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.length) {
    try {
      done += writeSync(fd, bytes, done, bytes.length - done);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === "EAGAIN") {
        Atomics.wait(sleeper, 0, 0, 1);
        continue;
      }
      if (code === "EPIPE") throw new OutputClosed();
      throw e;
    }
  }
}
