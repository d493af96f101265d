// `--net user`: a card whose other end is a UserNet of its own (one guest
// behind one NAT, as QEMU's -netdev user).
//
// Offloads end to end (virtio 1.2 5.1.6): the card hands over the guest's TCP
// super-frames whole and with partial checksums (txOffloads), which the NAT's
// TCP takes as one segment once the checksum is completed here; and when the
// guest's driver takes super-frames (GUEST_TSO4 with GUEST_CSUM), the NAT
// sends host data in super-segments of up to 64 KiB, which the card passes
// to the guest whole. A 64 KiB transfer then costs one descriptor chain each
// way instead of 45.

import { NetBackendError, GSO_TCPV4, type FrameMeta, type GuestOffloads, type NetBackend, type Offloads, type WarnFn } from "../../backends/net/net-backend.js";
import { NetBackendBase } from "../../backends/net/backend-base.js";
import { internetChecksum } from "../packet.js";
import { UserNet, UserNetError, type UserNetConfig } from "./user-net.js";

class UserNetBackend extends NetBackendBase {
  readonly providesDhcp = true;
  readonly txOffloads: Offloads = { csum: true, tso4: true, tso6: false };

  constructor(description: string, readonly net: UserNet, warn: WarnFn) {
    super(description, warn);
    net.onFrame = (frame, gsoSize) => {
      // The device's receive backlog (a NIC's FIFO) is full: drop, as a full
      // link would; TCP retransmits and slows down.
      if (this.rxPaused) this.stats.rxDropped++;
      else this.deliver(frame, gsoSize === undefined ? undefined : { gsoType: GSO_TCPV4, gsoSize });
    };
  }

  override send(frame: Uint8Array, meta?: FrameMeta): void {
    if (!meta?.needsCsum) return super.send(frame);
    // The guest left the transport checksum to the card: the field holds the
    // pseudo-header sum; the sum from csumStart to the end completes it.
    const start = meta.csumStart ?? -1;
    const at = start + (meta.csumOffset ?? -1);
    if (start < 0 || at < start || at + 2 > frame.length) {
      this.stats.txDropped++;
      return;
    }
    const copy = frame.slice();
    const sum = internetChecksum(copy.subarray(start));
    copy[at] = sum >> 8;
    copy[at + 1] = sum & 0xff;
    super.send(copy);
  }

  setGuestOffloads(o: GuestOffloads): void {
    this.net.tcp.setSuperSegments(o.tso4 && o.csum);
  }

  protected override transmit(frame: Uint8Array): boolean {
    this.net.input(frame.slice());
    return true;
  }

  protected override shutdown(): void {
    this.net.close();
  }
}

export async function openUserNetBackend(description: string, config: UserNetConfig, opts: { warn: WarnFn }): Promise<NetBackend & { net: UserNet }> {
  try {
    return new UserNetBackend(description, await UserNet.open(config), opts.warn);
  } catch (e) {
    if (e instanceof UserNetError) throw new NetBackendError(`--net user: ${e.message}`);
    throw e;
  }
}
