// The target side of a live migration (Host.listenForMigrations): a TCP
// listener; each connection carries one migration (stream.ts says the
// conversation). The VM is created at Config (its name taken, its RAM a p2m
// of this host's pool charged to it), the pages are written straight into
// that RAM as they come (a page sent again overwrites), State restores the
// machine over that RAM paused (Vm.restoreMigrated), Go lets it run.
//
// A connection that breaks, times out or sends anything malformed before Go
// leaves nothing behind: the half-built VM is destroyed and its frames go
// back; nothing of it ever ran. After Go the VM is this host's, whatever
// happens to the connection (the source stays paused when it hears no
// Resumed: see sender.ts).

import type { Server, Socket } from "node:net";
import { randomBytes } from "node:crypto";
import type { Worker } from "node:worker_threads";
import { startWorker } from "../../worker-script.js";
import type { Host, Vm, VmConfig } from "../../host/host.js";
import { P2m } from "../../memory/p2m.js";
import { Absent, absentEntry, entryFrame, isPresent } from "../../memory/p2m-entry.js";
import { RemotePages } from "./remote-pages.js";
import { applyDisk, type DiskCopySink } from "./disk-copy.js";
import type { PostcopyWorkerData, FromPostcopyWorker } from "./postcopy-worker.js";
import { VIRT_RAM_BASE } from "../../arch/riscv/layout.js";
import { StateReader, type Plain } from "../state.js";
import {
  Cmd, MIGRATION_VERSION, MessageReader, MessageWriter, MigrationError, applyPages, checkToken, createMigrationServer, expect, mac, macMatches, newNonce, parseJson, readBitmap, readJson, tlsKey,
} from "./stream.js";

/** What the source says of the VM coming in. */
export interface IncomingMigration {
  vm: { name: string; cpus: number; memBytes: number; cmdline: string; console: "ttyS0" | "hvc0" };
  /** The caller's description the source was given (Vm.migrate's definition). */
  definition?: Plain;
  /** The source's address. */
  from: string;
  /** Disks copied along (`--copy-disks`): their sizes, in the order of the definition's disks. */
  disks?: { bytes: number }[];
}

/** The host-side parts of the incoming VM (its devices' backends, its console). */
export type IncomingVmConfig = Omit<VmConfig, "cpus" | "memBytes" | "cmdline" | "console" | "kernel"> & {
  /** With disks copied along: where each one's bytes go (its new image, opened by its device, empty), in the order announced. */
  diskSinks?: readonly DiskCopySink[];
  /** After Complete, before the VM is restored: read the storage both hosts
   *  share afresh (opened at Config, it was written by the source since;
   *  MigrateOptions.releaseStorage has made it whole). Throwing refuses the migration. */
  acquireStorage?(): Promise<void>;
};

export interface ListenOptions {
  /** Address to listen on (default 127.0.0.1) and port (0: any free one, see listener.port). */
  host?: string;
  port: number;
  /** The shared secret: sources must prove they know it, and this side proves it too. */
  token: string | Uint8Array;
  /** TLS with a key from the token (sources must use `tls` too): the stream encrypted (stream.ts). */
  tls?: boolean;
  /** Turn the incoming VM's description into its host-side config (devices in
   *  the same slots as at the source); throw to refuse it. Default: no
   *  devices of its own, console output dropped. May be async (devices to open). */
  config?(incoming: IncomingMigration): IncomingVmConfig | Promise<IncomingVmConfig>;
  /** The VM runs here now (after Go). */
  onVm?(vm: Vm): void;
  /** A migration was refused or failed here: one line; `incoming` when
   *  config() had been called for it (what it opened can be released). */
  onError?(message: string, incoming?: IncomingMigration): void;
  /** A connection silent this long is dropped (default 60 s). */
  idleTimeoutMs?: number;
}

export class MigrationListener {
  private readonly connections = new Set<Socket>();
  private closed = false;

  private constructor(private readonly host: Host, private readonly server: Server, private readonly opts: ListenOptions) {}

  static async listen(host: Host, opts: ListenOptions): Promise<MigrationListener> {
    checkToken(opts.token);
    const psk = opts.tls ? tlsKey(opts.token) : undefined;
    let l: MigrationListener | undefined;
    const server = createMigrationServer(psk, (s) => l?.accept(s), (from, why) => opts.onError?.(`migration from ${from} refused: ${why}`));
    l = new MigrationListener(host, server, opts);
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(opts.port, opts.host ?? "127.0.0.1", () => {
        server.off("error", reject);
        resolve();
      });
    });
    return l;
  }

  /** The port it listens on. */
  get port(): number {
    const a = this.server.address();
    return typeof a === "object" && a ? a.port : 0;
  }

  /** Stop listening; migrations under way are cut (their VMs destroyed unless they already run). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const s of this.connections) s.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
  }

  private accept(socket: Socket): void {
    socket.setNoDelay(true);
    this.connections.add(socket);
    socket.on("close", () => this.connections.delete(socket));
    void this.serve(socket);
  }

  private async serve(socket: Socket): Promise<void> {
    const from = `${socket.remoteAddress}:${socket.remotePort}`;
    const peerName = "the source";
    const reader = new MessageReader(socket, "the source");
    const writer = new MessageWriter(socket, "the source");
    const idle = this.opts.idleTimeoutMs ?? 60_000;
    const next = async (cmd: Cmd, what: string) => expect(await reader.next(idle, what), cmd, peerName);
    let vm: Vm | undefined;
    let ram: P2m | undefined;
    let running = false;
    let remote: RemotePages | undefined;
    let copier: PostcopyCopier | undefined;
    let configured: IncomingMigration | undefined;
    try {
      // ---- hello ----
      const nonce = newNonce();
      await writer.json(Cmd.Hello, { version: MIGRATION_VERSION, nonce: nonce.toString("base64") });
      const hello = readJson(await next(Cmd.Hello, "its Hello"), peerName);
      const version = hello.int("version", 0, 0xffff);
      if (version !== MIGRATION_VERSION) throw new MigrationError(`the source speaks migration version ${version}, this host ${MIGRATION_VERSION}`);
      if (!macMatches(this.opts.token, "source", nonce, hello.bytes("mac", 64))) throw new MigrationError("authentication failed: wrong token");
      await writer.json(Cmd.Ack, { mac: mac(this.opts.token, "target", hello.bytes("nonce", 64)).toString("base64") });

      // ---- config: the VM is created, its RAM allocated as pages come ----
      const configMsg = await next(Cmd.Config, "the VM's config");
      const config = readJson(configMsg, peerName);
      const v = config.obj("vm");
      const incoming: IncomingMigration = {
        vm: { name: v.str("name", 63), cpus: v.int("cpus", 1, 512), memBytes: v.int("memBytes", 1 << 20, 2 ** 46), cmdline: v.str("cmdline", 65536), console: v.oneOf("console", ["ttyS0", "hvc0"]) },
        from,
      };
      // The listener's config() checks its own part, as it would a client's.
      if (config.has("definition")) incoming.definition = parseJson(configMsg, peerName).definition;
      if (config.has("disks")) incoming.disks = config.array("disks", 64).map((d) => ({ bytes: d.int("bytes", 0, 2 ** 53 - 1) }));
      configured = incoming;
      const own: IncomingVmConfig = this.opts.config ? await this.opts.config(incoming) : { consoleOut: () => {} };
      const sinks = own.diskSinks ?? [];
      const announced = incoming.disks ?? [];
      if (sinks.length !== announced.length) throw new MigrationError(`${announced.length} disks are copied along, this host has ${sinks.length} to take them`);
      sinks.forEach((sink, i) => {
        if (sink.capacityBytes !== announced[i].bytes) throw new MigrationError(`copied disk ${i} has ${announced[i].bytes} bytes, its copy here (${sink.name}) ${sink.capacityBytes}`);
      });
      const { diskSinks: _sinks, acquireStorage: _acquire, ...vmOwn } = own;
      vm = this.host.createVm({ ...vmOwn, name: own.name ?? incoming.vm.name, cpus: incoming.vm.cpus, memBytes: incoming.vm.memBytes, cmdline: incoming.vm.cmdline, console: incoming.vm.console });
      ram = new P2m(this.host.pool, VIRT_RAM_BASE, incoming.vm.memBytes, { owner: vm.owner });
      // Post-copy announced: the migration thread starts now (a thread takes
      // tens of milliseconds to start: not in the pause).
      const postcopyKey = randomBytes(32).toString("base64");
      if (config.has("postcopy") && config.bool("postcopy")) {
        remote = RemotePages.create();
        copier = await PostcopyCopier.start({ pool: this.host.pool.handle(), p2m: ram.handle(), remote: remote.handle(), host: this.opts.host ?? "127.0.0.1", key: postcopyKey, tls: this.opts.tls === true }, remote);
      }
      await writer.json(Cmd.Ack, {});

      // ---- pages, then the machine state ----
      let state: StateReader | undefined;
      let run = true;
      let pending: Uint32Array | undefined;
      let postcopy = false;
      let t0 = 0;
      for (;;) {
        const m = await reader.next(idle, "pages or the machine state");
        if (m.cmd === Cmd.Memory) {
          if (state) throw new MigrationError(`${peerName} sent pages after the machine state`);
          if (applyPages(ram, m.payload) === 0) await writer.json(Cmd.Ack, {}); // end of a round
        } else if (m.cmd === Cmd.Disk) {
          if (state) throw new MigrationError(`${peerName} sent disk data after the machine state`);
          await applyDisk(m.payload, sinks);
        } else if (m.cmd === Cmd.State) {
          if (state) throw new MigrationError(`${peerName} sent the machine state twice`);
          t0 = performance.now();
          state = new StateReader(parseJson(m, peerName), "machine");
          trace("state parsed", t0);
        } else if (m.cmd === Cmd.Pending) {
          if (pending) throw new MigrationError(`${peerName} sent the pending pages twice`);
          pending = readBitmap(m.payload, ram.count);
        } else {
          const complete = readJson(expect(m, Cmd.Complete, peerName), peerName);
          run = complete.bool("run");
          postcopy = complete.has("postcopy") && complete.bool("postcopy");
          if (!state) throw new MigrationError(`${peerName} sent Complete before the machine state`);
          if (postcopy !== (pending !== undefined)) throw new MigrationError(`${peerName} sent ${postcopy ? "a post-copy Complete without the pending pages" : "pending pages without post-copy"}`);
          break;
        }
      }
      trace("complete", t0);
      if (own.acquireStorage) {
        try {
          await own.acquireStorage();
        } catch (e) {
          throw new MigrationError(`reopening its disks here: ${(e as Error).message}`);
        }
      }
      let ready: Plain = {};
      if (pending) {
        // Post-copy: the pages still at the source become Remote, and a thread of ours fetches them.
        if (!copier) throw new MigrationError(`${peerName} sent pending pages without announcing post-copy in its Config`);
        markRemote(ram, pending);
        ready = { postcopy: { port: copier.port, key: postcopyKey } };
      } else if (copier) {
        // Announced, then not needed (it ended in pre-copy after all).
        await copier.stop("post-copy was not used");
        copier = undefined;
        remote = undefined;
      }
      const taken = ram;
      ram = undefined; // restoreMigrated owns it now, whatever happens
      const c = copier;
      vm.restoreMigrated(taken, state, remote, c && (() => c.stop("the VM is stopping")));
      trace("restored", t0);
      await writer.json(Cmd.Ready, ready);
      trace("ready sent", t0);
      await next(Cmd.Go, "Go");
      running = true;
      if (run) vm.resume();
      this.opts.onVm?.(vm);
      await writer.json(Cmd.Resumed, {}).catch(() => {}); // the VM is ours now, heard or not
      socket.end();
      if (copier) {
        // Post-copy: the guest runs while its last pages come; if the source goes, it is lost.
        const end = await copier.finished;
        if (end.kind === "failed") {
          const message = `post-copy migration of VM '${vm.name}' from ${from} failed after it started here: ${end.reason}; the guest is lost`;
          if (vm.state === "running" || vm.state === "paused") await vm.stop(message);
          this.opts.onError?.(message);
        }
      }
    } catch (e) {
      const reason = (e as Error).message.replace(/\s+/g, " ");
      if (running) return; // after Go nothing undoes it
      writer.abandon(reason); // says why, then closes
      if (!vm?.vmm) await copier?.stop("the migration failed"); // (a VM that has its machine stops it in teardown)
      ram?.release();
      if (vm) await vm.destroy();
      this.opts.onError?.(`migration from ${from} refused: ${reason}`, configured);
    }
  }
}

/** Post-copy: every pending page's entry becomes Remote (its frame, from an earlier round, goes back). */
function markRemote(ram: P2m, pending: Uint32Array): void {
  for (let w = 0; w < pending.length; w++) {
    let bits = pending[w];
    while (bits !== 0) {
      const low = bits & -bits;
      bits ^= low;
      const i = w * 32 + 31 - Math.clz32(low);
      const e = ram.entry(i);
      if (isPresent(e)) {
        ram.pool.free(entryFrame(e));
        ram.notePopulated(-1);
      }
      ram.casEntry(i, e, absentEntry(Absent.Remote));
    }
  }
}

/** The post-copy worker thread (postcopy-worker.ts), seen from the main thread. */
class PostcopyCopier {
  readonly finished: Promise<{ kind: "done"; pages: number } | { kind: "failed"; reason: string }>;

  private constructor(private readonly worker: Worker, private readonly remote: RemotePages, readonly port: number) {
    this.finished = new Promise((resolve) => {
      worker.on("message", (m: FromPostcopyWorker) => {
        if (m.kind !== "listening") {
          resolve(m);
          void worker.terminate();
        }
      });
      worker.on("error", (e) => resolve({ kind: "failed", reason: `the migration thread failed: ${e.message}` }));
      worker.on("exit", () => resolve({ kind: "failed", reason: "the migration thread exited" }));
    });
  }

  static async start(data: PostcopyWorkerData, remote: RemotePages): Promise<PostcopyCopier> {
    const worker = startWorker(new URL("./postcopy-worker.js", import.meta.url), { workerData: data });
    const port = await new Promise<number>((resolve, reject) => {
      worker.once("message", (m: FromPostcopyWorker) => (m.kind === "listening" ? resolve(m.port) : reject(new MigrationError("the migration thread did not start"))));
      worker.once("error", reject);
    });
    return new PostcopyCopier(worker, remote, port);
  }

  /** Waiters give up, the thread ends: nothing of it touches the RAM after. */
  async stop(reason: string): Promise<void> {
    this.remote.fail(reason);
    await this.worker.terminate();
  }
}

const TRACE = process.env.TSVISOR_MIGRATION_TRACE === "1";
function trace(what: string, since: number): void {
  if (TRACE) process.stderr.write(`migration target: ${what} at ${(performance.now() - since).toFixed(2)} ms (t=${performance.now().toFixed(1)})\n`);
}
