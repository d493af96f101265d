// `--net user`: a card whose other end is a UserNet of its own (one guest
// behind one NAT, as QEMU's -netdev user). The frames cross without copies
// beyond the one NetBackend's contract asks for (the device may reuse its
// buffer once send() returns).

import { NetBackendError, type NetBackend, type WarnFn } from "../../backends/net/net-backend.js";
import { NetBackendBase } from "../../backends/net/backend-base.js";
import { UserNet, UserNetError, type UserNetConfig } from "./user-net.js";

class UserNetBackend extends NetBackendBase {
  readonly providesDhcp = true;
  constructor(description: string, readonly net: UserNet, warn: WarnFn) {
    super(description, warn);
    net.onFrame = (frame) => {
      // The device's receive backlog (a NIC's FIFO) is full: drop, as a full
      // link would; TCP retransmits and slows down.
      if (this.rxPaused) this.stats.rxDropped++;
      else this.deliver(frame);
    };
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
