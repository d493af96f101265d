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

import { createServer, type Server, type Socket } from "node:net";
import type { Host, Vm, VmConfig } from "../../host/host.js";
import { P2m } from "../../memory/p2m.js";
import { VIRT_RAM_BASE } from "../../arch/riscv/layout.js";
import { StateReader, type Plain } from "../state.js";
import {
  Cmd, MIGRATION_VERSION, MessageReader, MessageWriter, MigrationError, applyPages, checkToken, expect, mac, macMatches, newNonce, parseJson, readJson,
} from "./stream.js";

/** What the source says of the VM coming in. */
export interface IncomingMigration {
  vm: { name: string; cpus: number; memBytes: number; cmdline: string; console: "ttyS0" | "hvc0" };
  /** The caller's description the source was given (Vm.migrate's definition). */
  definition?: Plain;
  /** The source's address. */
  from: string;
}

/** The host-side parts of the incoming VM (its devices' backends, its console). */
export type IncomingVmConfig = Omit<VmConfig, "cpus" | "memBytes" | "cmdline" | "console" | "kernel">;

export interface ListenOptions {
  /** Address to listen on (default 127.0.0.1) and port (0: any free one, see listener.port). */
  host?: string;
  port: number;
  /** The shared secret: sources must prove they know it, and this side proves it too. */
  token: string | Uint8Array;
  /** Turn the incoming VM's description into its host-side config (devices in
   *  the same slots as at the source); throw to refuse it. Default: no
   *  devices of its own, console output dropped. */
  config?(incoming: IncomingMigration): IncomingVmConfig;
  /** The VM runs here now (after Go). */
  onVm?(vm: Vm): void;
  /** A migration was refused or failed here: one line. */
  onError?(message: string): void;
  /** A connection silent this long is dropped (default 60 s). */
  idleTimeoutMs?: number;
}

export class MigrationListener {
  private readonly connections = new Set<Socket>();
  private closed = false;

  private constructor(private readonly host: Host, private readonly server: Server, private readonly opts: ListenOptions) {}

  static async listen(host: Host, opts: ListenOptions): Promise<MigrationListener> {
    checkToken(opts.token);
    const server = createServer();
    const l = new MigrationListener(host, server, opts);
    server.on("connection", (s) => l.accept(s));
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
      const own = this.opts.config ? this.opts.config(incoming) : { consoleOut: () => {} };
      vm = this.host.createVm({ ...own, name: own.name ?? incoming.vm.name, cpus: incoming.vm.cpus, memBytes: incoming.vm.memBytes, cmdline: incoming.vm.cmdline, console: incoming.vm.console });
      ram = new P2m(this.host.pool, VIRT_RAM_BASE, incoming.vm.memBytes, { owner: vm.owner });
      await writer.json(Cmd.Ack, {});

      // ---- pages, then the machine state ----
      let state: StateReader | undefined;
      let run = true;
      let t0 = 0;
      for (;;) {
        const m = await reader.next(idle, "pages or the machine state");
        if (m.cmd === Cmd.Memory) {
          if (state) throw new MigrationError(`${peerName} sent pages after the machine state`);
          if (applyPages(ram, m.payload) === 0) await writer.json(Cmd.Ack, {}); // end of a round
        } else if (m.cmd === Cmd.State) {
          if (state) throw new MigrationError(`${peerName} sent the machine state twice`);
          t0 = performance.now();
          state = new StateReader(parseJson(m, peerName), "machine");
          trace("state parsed", t0);
        } else {
          run = readJson(expect(m, Cmd.Complete, peerName), peerName).bool("run");
          if (!state) throw new MigrationError(`${peerName} sent Complete before the machine state`);
          break;
        }
      }
      const taken = ram;
      ram = undefined; // restoreMigrated owns it now, whatever happens
      trace("complete", t0);
      vm.restoreMigrated(taken, state);
      trace("restored", t0);
      await writer.json(Cmd.Ready, {});
      trace("ready sent", t0);
      await next(Cmd.Go, "Go");
      running = true;
      if (run) vm.resume();
      this.opts.onVm?.(vm);
      await writer.json(Cmd.Resumed, {}).catch(() => {}); // the VM is ours now, heard or not
      socket.end();
    } catch (e) {
      const reason = (e as Error).message.replace(/\s+/g, " ");
      if (running) return; // after Go nothing undoes it
      writer.abandon(reason);
      socket.destroy();
      ram?.release();
      if (vm) await vm.destroy();
      this.opts.onError?.(`migration from ${from} refused: ${reason}`);
    }
  }
}

const TRACE = process.env.TSVISOR_MIGRATION_TRACE === "1";
function trace(what: string, since: number): void {
  if (TRACE) process.stderr.write(`migration target: ${what} at ${(performance.now() - since).toFixed(2)} ms (t=${performance.now().toFixed(1)})\n`);
}
