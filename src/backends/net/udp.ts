// `--net socket=udp:HOST:PORT,peer=HOST:PORT`: one Ethernet frame per UDP
// datagram, as QEMU's `-netdev dgram` does: a cable between two VMs (tsvisor
// or QEMU) that needs no listener to start first and survives either side
// restarting. Datagrams from anyone but the peer are ignored, so another
// program on the host cannot inject frames by guessing the port.

import { createSocket, type Socket } from "node:dgram";
import { lookup } from "node:dns/promises";
import { NetBackendError, MAX_QUEUED_BYTES, formatHostPort, type HostPort, type NetBackend, type WarnFn } from "./net-backend.js";
import { NetBackendBase } from "./backend-base.js";

/** The largest UDP payload over IPv4 (65535 - 20 IP - 8 UDP); a larger frame cannot be sent. */
const MAX_DATAGRAM_BYTES = 65507;

async function resolve(description: string, what: string, host: string, family?: 4 | 6): Promise<{ address: string; family: 4 | 6 }> {
  try {
    const r = await lookup(host, family ? { family } : {});
    return { address: r.address, family: r.family === 6 ? 6 : 4 };
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const hint = family ? ` as an IPv${family} address, like the local address` : "";
    throw new NetBackendError(`${description}: cannot resolve ${what} ${host}${hint} (${code})`);
  }
}

class UdpBackend extends NetBackendBase {
  private sendFailed = false;

  constructor(description: string, private readonly socket: Socket, private readonly peer: { address: string; port: number }, warn: WarnFn) {
    super(description, warn);
    socket.on("message", (msg, from) => {
      if (from.address !== peer.address || from.port !== peer.port || msg.length === 0) return;
      if (this.rxPaused) this.stats.rxDropped++;
      else this.deliver(msg);
    });
    socket.on("error", (e) => this.warn(`socket error: ${e.message}`));
  }

  protected override transmit(frame: Uint8Array): boolean {
    if (frame.length > MAX_DATAGRAM_BYTES || this.socket.getSendQueueSize() + frame.length > MAX_QUEUED_BYTES) return false;
    this.socket.send(Buffer.from(frame), this.peer.port, this.peer.address, (e) => {
      if (!e || this.sendFailed || this.closed) return;
      this.sendFailed = true; // say it once: the peer's network may come back
      this.warn(`cannot send to the peer: ${e.message}`);
    });
    return true;
  }

  protected override shutdown(): void {
    this.socket.close();
  }
}

export async function openUdp(description: string, local: HostPort, peer: HostPort, opts: { warn: WarnFn }): Promise<NetBackend> {
  const localAddr = await resolve(description, "the local address", local.host);
  const peerAddr = await resolve(description, "the peer", peer.host, localAddr.family);
  const socket = createSocket({ type: localAddr.family === 6 ? "udp6" : "udp4" });
  await new Promise<void>((ok, fail) => {
    socket.once("error", (e) => {
      socket.close();
      fail(new NetBackendError(`${description}: cannot bind ${formatHostPort(local)}: ${e.message}`));
    });
    socket.bind(local.port, localAddr.address, () => ok());
  });
  socket.removeAllListeners("error");
  return new UdpBackend(description, socket, { address: peerAddr.address, port: peer.port }, opts.warn);
}
