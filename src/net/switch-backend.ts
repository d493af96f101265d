// `--net switch=NAME,...`: a virtio-net card plugged into a port of a virtual
// switch in this process. The card's transmit is the port's input; what the
// switch delivers to the port is the card's receive.
//
// Switches live in a process-wide registry by name, created on first use: in
// `tsvisor run` the VMs of that process share them, in a host daemon its VMs do.

import { NetBackendError, defaultWarn, type FrameMeta, type NetBackend, type Offloads, type WarnFn } from "../backends/net/net-backend.js";
import { NetBackendBase } from "../backends/net/backend-base.js";
import { VirtualSwitch, type PortRateLimits, type SwitchOptions, type SwitchPort } from "./switch.js";

const registry = new Map<string, VirtualSwitch>();

/** The switches of this process, by name. */
export const switches: ReadonlyMap<string, VirtualSwitch> = registry;

/** The switch called `name`; created with `opts` if there is none yet (an existing one keeps its options). */
export function getOrCreateSwitch(name: string, opts: SwitchOptions = {}): VirtualSwitch {
  let sw = registry.get(name);
  if (!sw) {
    sw = new VirtualSwitch(name, opts);
    registry.set(name, sw);
  }
  return sw;
}

/** Removes the switch `name` from the registry once it has no ports left; false while ports remain. */
export function releaseSwitch(name: string): boolean {
  const sw = registry.get(name);
  if (!sw) return true;
  if (sw.ports.length > 0) return false;
  registry.delete(name);
  return true;
}

export interface SwitchPortBackendOptions {
  /** The port's name on the switch (unique there), e.g. the VM's name and card index. */
  name: string;
  /** The card's MAC: the port enforces it (anti-spoofing) and binds it. */
  mac: Uint8Array;
  vlan?: number;
  rateLimit?: PortRateLimits;
  warn?: WarnFn;
}

/** A card takes and sends super-frames and partial checksums (the device cuts them for a guest that does not). */
const CARD_OFFLOADS: Offloads = { csum: true, tso4: true, tso6: true };

class SwitchBackend extends NetBackendBase {
  readonly port: SwitchPort;
  readonly txOffloads = CARD_OFFLOADS;

  constructor(sw: VirtualSwitch, opts: SwitchPortBackendOptions) {
    super(`switch:${sw.name}:${opts.name}`, opts.warn ?? defaultWarn);
    this.port = sw.attach({
      name: opts.name,
      mac: opts.mac,
      vlan: opts.vlan,
      rateLimit: opts.rateLimit,
      offloads: CARD_OFFLOADS,
      deliver: (frame, meta) => this.fromSwitch(frame, meta),
    });
  }

  /** Guest -> switch, a super-frame or partial checksum whole (the card checked its headers). */
  override send(frame: Uint8Array, meta?: FrameMeta): void {
    if (!meta) return super.send(frame);
    if (this.closed || !this.port.input(frame, meta)) {
      this.stats.txDropped++;
      return;
    }
    this.stats.txFrames++;
    this.stats.txBytes += frame.length;
  }

  /** Switch -> guest. While the guest has no receive buffers the frame is dropped, as on a full wire. */
  private fromSwitch(frame: Uint8Array, meta?: FrameMeta): boolean {
    if (this.closed) return false;
    if (this.rxPaused || !this.onFrame) {
      this.stats.rxDropped++;
      return false;
    }
    this.deliver(frame, meta);
    return true;
  }

  /** Guest -> switch; a frame the switch refuses counts in txDropped and in the port's drops. */
  protected override transmit(frame: Uint8Array): boolean {
    return this.port.input(frame);
  }

  protected override shutdown(): void {
    this.port.detach();
  }
}

/**
 * Plugs a card into `sw`. Throws a NetBackendError (one line) when the port
 * cannot be made: a name or MAC already on the switch, a VLAN out of range,
 * a bad rate limit.
 */
export function openSwitchPort(sw: VirtualSwitch, opts: SwitchPortBackendOptions): NetBackend & { readonly port: SwitchPort } {
  try {
    return new SwitchBackend(sw, opts);
  } catch (e) {
    throw new NetBackendError(`switch:${sw.name}:${opts.name}: ${(e as Error).message}`);
  }
}
