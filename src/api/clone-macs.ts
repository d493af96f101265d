// A clone's network identity (issue 15). A VM restored from a snapshot under
// another name than the snapshot's VM is a clone: it gets the MAC addresses a
// VM created under its own name would get, so clones of one snapshot do not
// share their original's addresses on a switch (QEMU and Firecracker leave
// that to the user). Its guest's driver read the old address at probe and a
// device cannot change it (virtio 1.2, 5.1.4.2), so the guest is told by its
// agent (images/agent/agent.c, as `vm exec`), running `ip link set ...
// address`; until it has, the cards hold their traffic (VirtioNet
// holdTraffic), then each announces its new address.
import { formatMac, parseNetSpec } from "../backends/net/net-spec.js";
import { defaultMac } from "../cli/vm-devices.js";

export interface MacChange {
  /** The card's address in the snapshot (what the guest uses). */
  from: string;
  /** Its address in the clone. */
  to: string;
}

/** How long the guest has to take its new addresses (the agent connects within 5 s itself). */
export const MAC_CHANGE_TIMEOUT_MS = 20_000;

/**
 * The net specs of a clone named `name` whose snapshot's definition had
 * `nets` (each with its mac= written out, as snapshots store them), and the
 * address each card changes from and to.
 */
export function cloneNets(nets: string[], name: string): { nets: string[]; changes: MacChange[] } {
  const changes: MacChange[] = [];
  const out = nets.map((spec, i) => {
    const old = parseNetSpec(spec).mac;
    const bare = spec.split(",").filter((item) => !item.startsWith("mac=")).join(",");
    const to = formatMac(defaultMac(`${name}${bare}`, i));
    if (old) changes.push({ from: formatMac(old), to });
    return `${bare},mac=${to}`;
  });
  return { nets: out, changes };
}

/**
 * The guest's half, for its shell: each interface whose address is a `from`
 * gets its `to` (virtio-net's Linux driver changes it live:
 * IFF_LIVE_ADDR_CHANGE). An interface not there (its driver not loaded)
 * needs nothing: its driver will read the new address from the device.
 * Exits non-zero, saying which, when `ip` refuses one.
 */
export function macChangeScript(changes: MacChange[]): string {
  const cases = changes.map((c) => `    ${c.from}) ip link set dev "$ifc" address ${c.to} || { echo "$ifc: could not take ${c.to}" >&2; status=1; } ;;`);
  return [
    "status=0",
    "for d in /sys/class/net/*; do",
    '  ifc=${d##*/}',
    '  case "$(cat "$d/address" 2>/dev/null)" in',
    ...cases,
    "  esac",
    "done",
    "exit $status",
  ].join("\n");
}
