// For the VXLAN interoperability tests: a network namespace joined to this
// one by a veth pair, with Linux's own vxlan device in it. The test owns it
// and removes it (close()); open() returns undefined, after telling the test
// why it skips, where namespaces or vxlan are not available (not root, no
// iproute2, a kernel without vxlan). Addresses are private and unique per
// process (`salt` keeps two tests of one process apart); traffic stays on
// the veth pair and inside the namespace.

import { execFile } from "node:child_process";
import { createSocket } from "node:dgram";
import type { TestContext } from "node:test";
import { promisify } from "node:util";
import type { AddressInfo } from "node:net";

const run = promisify(execFile);

export async function commandWorks(file: string, args: string[]): Promise<boolean> {
  try {
    await run(file, args);
    return true;
  } catch {
    return false;
  }
}

export interface VxlanLab {
  ns: string;
  /** The underlay: this side's veth address, the namespace's, and the UDP port both ends use. */
  rootAddr: string;
  nsAddr: string;
  port: number;
  vni: number;
  /** The overlay: the Linux vxlan device's address (/24) and one free for tsvisor's side. */
  linuxOverlay: string;
  tsvisorOverlay: string;
  linuxMac: string;
  /** Runs a command inside the namespace. */
  inNs(...args: string[]): Promise<{ stdout: string }>;
  close(): Promise<void>;
}

export async function openVxlanLab(t: TestContext, salt: number): Promise<VxlanLab | undefined> {
  if (process.platform !== "linux" || process.getuid?.() !== 0) {
    t.skip("needs root on Linux to create a network namespace");
    return undefined;
  }
  const id = `${process.pid}${salt}`.slice(-6);
  const x = (process.pid + salt * 37) % 250;
  const ns = `tsvisor-vx-${id}`;
  const [vethRoot, vethNs] = [`tsvx${id}r`, `tsvx${id}n`];
  const [rootAddr, nsAddr] = [`10.201.${x}.1`, `10.201.${x}.2`];
  const vni = 4200 + x;
  const ip = (...args: string[]) => run("ip", args);
  if (!(await commandWorks("ip", ["netns", "add", ns]))) {
    t.skip("`ip netns add` is not available here");
    return undefined;
  }
  const close = async () => {
    await commandWorks("ip", ["link", "del", vethRoot]);
    await commandWorks("ip", ["netns", "del", ns]);
  };
  try {
    await ip("link", "add", vethRoot, "type", "veth", "peer", "name", vethNs);
    await ip("link", "set", vethNs, "netns", ns);
    await ip("addr", "add", `${rootAddr}/30`, "dev", vethRoot);
    await ip("link", "set", vethRoot, "up");
    await ip("-n", ns, "addr", "add", `${nsAddr}/30`, "dev", vethNs);
    await ip("-n", ns, "link", "set", vethNs, "up");
    await ip("-n", ns, "link", "set", "lo", "up");
    // veth leaves checksums to "hardware" that is not there: a TCP segment the
    // vxlan device sends would reach tsvisor's UDP socket with only the
    // pseudo-header in its checksum field (CHECKSUM_PARTIAL is not resolved
    // for a local socket). A physical NIC fills it in; here the kernel must.
    if (!(await commandWorks("ip", ["netns", "exec", ns, "ethtool", "-K", vethNs, "tx", "off"]))) {
      t.skip("needs ethtool to turn off the veth's checksum offload");
      await close();
      return undefined;
    }
    const s = createSocket("udp4");
    await new Promise<void>((ok) => s.bind(0, rootAddr, ok));
    const port = (s.address() as AddressInfo).port;
    await new Promise<void>((ok) => s.close(() => ok()));
    if (!(await commandWorks("ip", ["-n", ns, "link", "add", "vx0", "type", "vxlan", "id", `${vni}`, "dstport", `${port}`, "remote", rootAddr, "local", nsAddr]))) {
      t.skip("the kernel has no vxlan support");
      await close();
      return undefined;
    }
    const linuxOverlay = `192.168.${x}.2`;
    await ip("-n", ns, "addr", "add", `${linuxOverlay}/24`, "dev", "vx0");
    await ip("-n", ns, "link", "set", "vx0", "up");
    const linuxMac = JSON.parse((await ip("-n", ns, "-j", "link", "show", "vx0")).stdout)[0].address as string;
    return {
      ns, rootAddr, nsAddr, port, vni, linuxOverlay, tsvisorOverlay: `192.168.${x}.1`, linuxMac, close,
      inNs: (...args: string[]) => run("ip", ["netns", "exec", ns, ...args], { timeout: 20_000 }),
    };
  } catch (e) {
    await close();
    throw e;
  }
}
