// A pCPU worker thread started before there is a host to take it.
//
// A worker thread needs 40 ms or more here before it can run a guest
// (Node's bootstrap of the thread, then its modules): longer than anything
// else a fast start (`run -- CMD`) does after Node's own start. Started
// before the CLI loads its code and opens the snapshot, that time overlaps
// theirs instead of following it. Whoever starts one hands it to the host's
// PcpuPool (pcpu-pool.ts adoptPrestartedPcpus), which tells it its pCPU;
// kept apart from the pool so the CLI's launcher (cli/launch.ts) can start
// one before it loads the rest.

import type { Worker } from "node:worker_threads";
import { startWorker } from "../worker-script.js";
import type { PcpuWorkerStart } from "./pcpu-worker.js";

export interface PrestartedPcpu {
  readonly worker: Worker;
  /** False once it has died (it is not adopted then: a new one is started). */
  alive: boolean;
  /** Its listener for the thread's error and exit until a pool adopts it. */
  readonly died: () => void;
}

/** Start the pCPU worker script at `url`; it does not keep the process alive until a host takes it. */
export function startPcpuWorker(url: URL): PrestartedPcpu {
  const p: PrestartedPcpu = {
    worker: startWorker(url, { workerData: { prestarted: true } satisfies PcpuWorkerStart }), alive: true, died: () => (p.alive = false),
  };
  // Noticed when a host would take it; an error without a listener would end the process.
  p.worker.on("error", p.died).on("exit", p.died);
  p.worker.unref();
  return p;
}
