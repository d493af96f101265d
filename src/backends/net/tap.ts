// `--net tap=NAME`: the guest's frames go to a Linux tap device, where the
// host kernel sees them as an Ethernet interface (bridge it, route it, give it
// an address). Attaching to a tap takes an ioctl Node cannot make, so a small
// C program does it (tap-relay.c, built into build/tap-relay) and relays the
// frames over its stdin/stdout with the stream framing (framing.ts).
//
// The backend opens when the relay says "ready" (an empty frame first), and
// fails with the relay's one-line reason if it exits instead. If the relay
// dies later, that is said once on stderr and frames are dropped from then on:
// the VM keeps running with its cable unplugged.

import { spawn, type ChildProcessByStdio } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import type { Readable, Writable } from "node:stream";
import { NetBackendError, type NetBackend, type WarnFn } from "./net-backend.js";
import { StreamBackend } from "./stream-backend.js";
import { projectRoot } from "../../project-root.js";

type Relay = ChildProcessByStdio<Writable, Readable, Readable>;

export function tapRelayPath(): string {
  return join(projectRoot(), "build", "tap-relay");
}

/** The relay's first stderr line, else how it ended. */
function relayEnding(stderr: string, code: number | null, signal: NodeJS.Signals | null): string {
  const line = stderr.split("\n").find((l) => l.trim() !== "");
  if (line) return line.trim();
  return signal ? `tap relay killed by ${signal}` : `tap relay exited with status ${code}`;
}

class TapBackend extends StreamBackend {
  constructor(description: string, private readonly relay: Relay, stderr: () => string, warn: WarnFn) {
    super(description, warn);
    this.attach(relay.stdout, relay.stdin);
    relay.on("close", (code, signal) => {
      if (!this.closed) this.warn(`${relayEnding(stderr(), code, signal)}; the tap is unplugged, frames are dropped from now on`);
    });
    relay.on("error", () => {}); // reported by "close" above
  }

  protected override shutdown(): void {
    // The relay exits when its stdin ends; a non-persistent tap goes with it.
    this.relay.stdin.end();
    this.dropConnection();
  }
}

/** Waits for the relay's "ready" (4 zero bytes on stdout); rejects with its reason if it ends first. */
function relayReady(description: string, relay: Relay, stderr: () => string): Promise<void> {
  return new Promise((resolve, reject) => {
    const settle = (error?: NetBackendError) => {
      relay.stdout.off("readable", onReadable);
      relay.off("close", onClose);
      relay.off("error", onError);
      if (error) reject(error);
      else resolve();
    };
    const onReadable = () => {
      const header = relay.stdout.read(4) as Buffer | null;
      if (header === null) return;
      if (header.readUInt32BE(0) === 0) return settle();
      relay.kill();
      settle(new NetBackendError(`${description}: the tap relay did not start properly`));
    };
    const onClose = (code: number | null, signal: NodeJS.Signals | null) =>
      settle(new NetBackendError(`${description}: ${relayEnding(stderr(), code, signal)}`));
    const onError = (e: Error) => settle(new NetBackendError(`${description}: cannot run the tap relay: ${e.message}`));
    relay.stdout.on("readable", onReadable);
    relay.on("close", onClose);
    relay.on("error", onError);
  });
}

export async function openTap(description: string, ifname: string, opts: { warn: WarnFn }): Promise<NetBackend> {
  if (process.platform !== "linux") throw new NetBackendError(`${description}: tap devices exist on Linux only (use --net socket=...)`);
  const path = tapRelayPath();
  if (!existsSync(path)) {
    throw new NetBackendError(`${description}: ${path} was not built (no C compiler when tsvisor was built: install gcc, then run npm run build)`);
  }
  const relay = spawn(path, [ifname], { stdio: ["pipe", "pipe", "pipe"] });
  let stderr = "";
  relay.stderr.setEncoding("utf8");
  relay.stderr.on("data", (s: string) => {
    if (stderr.length < 4096) stderr += s;
  });
  await relayReady(description, relay, () => stderr);
  return new TapBackend(description, relay, () => stderr, opts.warn);
}
