// The root disk of a daemon VM defined with `image: "debian"` (`vm create
// --image debian`): an overlay of its own on the Debian system image's qcow2
// base (images/debian-system.ts), <state dir>/disks/<name>-debian.qcow2,
// which the daemon puts first in the VM's disks (/dev/vda; init mounts it as
// the root: tsvisor.root=, images/init.ts). Unlike `run --image`'s overlay it
// is the VM's disk: made at its first start (the system image pulled first,
// once), kept across stops and reboots, removed with the VM.
//
// Everything else (snapshots, --disks overlay, migration, --copy-disks)
// sees an ordinary qcow2 disk. Only the one this host made for this VM is
// touched here: a migrated VM's first disk names the source's file or its
// copy, a snapshot's --disks overlay puts a new image in front of it (which
// the snapshot then needs: vm rm leaves it).
import { existsSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import type { VmDefinition } from "./definition.js";

export function rootDiskPath(stateDir: string, name: string, image: string): string {
  return join(stateDir, "disks", `${name}-${image}.qcow2`);
}

export function rootDiskSpec(path: string): string {
  return `${path},format=qcow2`;
}

/** Whether `def`'s first disk is still the root disk this host made at `path`. */
function ownsRootDisk(def: VmDefinition, path: string): boolean {
  return def.image !== undefined && def.disks[0]?.split(",")[0] === path;
}

// One system image build at a time in this process: two VMs starting at once would build it twice into one directory.
let pulling: Promise<unknown> = Promise.resolve();

/**
 * Before a cold start: the system image pulled (built on first use, about 11
 * minutes; its progress goes to `event`) and the root disk made on it, or,
 * when it exists, checked to be on the base's current build (after `image
 * pull debian --force` the old overlay's blocks no longer fit: refused).
 */
export async function prepareRootDisk(def: VmDefinition, path: string, event: (line: string) => void): Promise<void> {
  if (!ownsRootDisk(def, path)) return;
  const [{ OverlayError, baseBuildId, makeOverlay }, { pullDebianSystem }] = await Promise.all([import("../cli/system-image.js"), import("../images/debian-system.js")]);
  const pull = pulling.then(() => pullDebianSystem({ progress: event }));
  pulling = pull.catch(() => {});
  const system = await pull;
  const made = !existsSync(path);
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  try {
    makeOverlay(system.diskPath, system.manifest.disk.virtualSize, path, baseBuildId(system.manifest));
  } catch (e) {
    if (e instanceof OverlayError) throw new Error(`its root disk ${e.message.replace(/: remove it, or use another --disk-name$/, ": remove that file to start again on a new root disk")}`);
    throw new Error(`cannot make its root disk ${path}: ${(e as Error).message}`);
  }
  if (made) event(`made its root disk ${path} on the ${def.image} system image`);
}

/** At `vm rm`: the root disk this host made, and its note of the base's build. */
export function removeRootDisk(def: VmDefinition, path: string): void {
  if (!ownsRootDisk(def, path)) return;
  rmSync(path, { force: true });
  rmSync(`${path}.base`, { force: true });
}
