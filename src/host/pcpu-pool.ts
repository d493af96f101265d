// The host's pCPU workers as the main thread sees them: starting and
// stopping them, telling them about VMs, and asking what only they know.

import { coreModule } from "../vcpu/core.js";
import { MessageChannel, type MessagePort, type Worker } from "node:worker_threads";
import type { FramePool } from "../memory/frame-pool.js";
import type { JitStats } from "../jit/jit.js";
import type { Scheduler } from "./scheduler.js";
import type { PcpuMessage, PcpuReply, VmDescriptor } from "./pcpu-protocol.js";
import type { PcpuWorkerData } from "./pcpu-worker.js";
import type { PrestartedPcpu } from "./pcpu-prestart.js";
import { startWorker } from "../worker-script.js";

interface PcpuThread {
  worker: Worker;
  port: MessagePort;
  /** Settles when the thread has ended (quit, or died). */
  exited: Promise<void>;
  alive: boolean;
}

const WORKER_URL = new URL("./pcpu-worker.js", import.meta.url);

/** Started before the next PcpuPool made in this process (pcpu-prestart.ts), which takes them as its first pCPUs. */
const prestarted: PrestartedPcpu[] = [];

/** Workers started before the CLI's code was loaded (cli/launch.ts), for the next host to take. Workers no host takes do not keep the process alive. */
export function adoptPrestartedPcpus(workers: readonly PrestartedPcpu[]): void {
  prestarted.push(...workers);
}

export class PcpuPool {
  private readonly threads: PcpuThread[] = [];
  private nextToken = 1;
  /** Questions asked and not answered yet, by token. A thread that dies
   *  answers its own with "gone", so nobody waits for a dead thread. */
  private readonly waiting = new Map<number, { thread: PcpuThread; resolve(reply: PcpuReply): void }>();
  private closed = false;

  /** `onFatal`: a worker died (a hypervisor bug): the host cannot go on. */
  constructor(count: number, pool: FramePool, private readonly sched: Scheduler, onFatal: (e: Error) => void) {
    const early = prestarted.splice(0).filter((p) => {
      p.worker.off("error", p.died).off("exit", p.died);
      return p.alive;
    });
    for (const extra of early.splice(count)) void extra.worker.terminate();
    for (let pcpu = 0; pcpu < count; pcpu++) {
      const { port1, port2 } = new MessageChannel();
      const data: PcpuWorkerData = { pcpu, pool: pool.handle(), sched: sched.handle, port: port2, coreModule: coreModule() };
      // A prestarted worker is told who it is now (it waits for that message); else a new one starts.
      let worker = early.shift()?.worker;
      if (worker) worker.postMessage(data, [port2]);
      else worker = startWorker(WORKER_URL, { workerData: data, transferList: [port2] });
      let markExited!: () => void;
      const thread: PcpuThread = { worker, port: port1, alive: true, exited: new Promise<void>((r) => (markExited = r)) };
      worker.on("error", (e) => {
        if (!this.closed) onFatal(new Error(`pCPU ${pcpu} failed: ${e.message}${whereThrown(e)}`));
      });
      worker.on("exit", (code) => {
        thread.alive = false;
        markExited();
        for (const [token, w] of this.waiting) {
          if (w.thread !== thread) continue;
          this.waiting.delete(token);
          w.resolve({ kind: "gone", token });
        }
        if (!this.closed) onFatal(new Error(`pCPU ${pcpu} exited (status ${code})`));
      });
      port1.on("message", (reply: PcpuReply) => {
        const w = this.waiting.get(reply.token);
        if (w) {
          this.waiting.delete(reply.token);
          w.resolve(reply);
        }
      });
      // The ports must not keep the process alive on their own: the host's
      // VMs do that while they run.
      port1.unref();
      worker.unref();
      this.threads.push(thread);
    }
  }

  get count(): number {
    return this.threads.length;
  }

  /** Post to every worker and wake them (a sleeping worker drains its port when woken). */
  private broadcast(msg: PcpuMessage): void {
    for (const t of this.threads) t.port.postMessage(msg);
    this.sched.tickleIdle();
  }

  private ask(make: (token: number) => PcpuMessage): Promise<PcpuReply[]> {
    return Promise.all(
      this.threads.filter((t) => t.alive).map((t) => {
        const token = this.nextToken++;
        return new Promise<PcpuReply>((resolve) => {
          this.waiting.set(token, { thread: t, resolve });
          t.port.postMessage(make(token));
          this.sched.tickleIdle();
        });
      }),
    );
  }

  addVm(vm: VmDescriptor): void {
    this.broadcast({ kind: "add-vm", vm });
  }

  /** Every worker forgets the VM and frees its translation cache for it. */
  async dropVm(id: number): Promise<void> {
    await this.ask((token) => ({ kind: "drop-vm", id, token }));
  }

  /** The VM's translation counts, summed over the workers' caches. */
  async jitStats(id: number): Promise<JitStats | undefined> {
    const replies = await this.ask((token) => ({ kind: "jit-stats", id, token }));
    let sum: JitStats | undefined;
    for (const r of replies) {
      if (r.kind !== "jit-stats" || !r.stats) continue;
      if (!sum) sum = { ...r.stats };
      else for (const key of Object.keys(sum) as (keyof JitStats)[]) sum[key] += r.stats[key];
    }
    return sum;
  }

  async close(): Promise<void> {
    this.closed = true;
    this.broadcast({ kind: "quit" });
    await Promise.all(this.threads.map((t) => {
      // A worker stuck waiting in an exit mailbox cannot see "quit".
      if (t.alive) setTimeout(() => void t.worker.terminate(), 2000).unref();
      return t.exited;
    }));
    for (const t of this.threads) t.port.close();
  }
}

/** " (at FUNCTION FILE:LINE:COLUMN)" of the first frame of tsvisor's code in
 *  `e`'s stack, for the one line a worker's death (a hypervisor bug) leaves. */
function whereThrown(e: Error): string {
  const frame = /\n\s+at (?:(\S+) \()?(?:file:\/\/)?[^\s()]*\/([^\s()/]+\.c?js):(\d+):(\d+)/.exec(e.stack ?? "");
  return frame ? ` (at ${frame[1] ? `${frame[1]} ` : ""}${frame[2]}:${frame[3]}:${frame[4]})` : "";
}
