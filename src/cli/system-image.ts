// `tsvisor run --image debian`: the Debian system disk (images/debian-system.ts)
// behind a copy-on-write overlay of its own, so the base image stays clean.
//
// The overlay is a qcow2 image whose backing file is the base: made in a
// temporary directory and removed after the run, or kept as
// <cache>/disks/NAME.qcow2 with `--disk-name NAME` (made on first use, used
// again by later runs with the same name).

import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createQcow2 } from "../backends/disk/qcow2/create.js";
import { UsageError } from "./size.js";

export const IMAGE_NAMES = ["debian"] as const;
export type ImageName = (typeof IMAGE_NAMES)[number];

/** `--image NAME` checked: a usage error (exit 2) for a name tsvisor does not build. */
export function checkImageName(name: string, where: string): ImageName {
  if ((IMAGE_NAMES as readonly string[]).includes(name)) return name as ImageName;
  throw new UsageError(`${where}: unknown image '${name}' (known: ${IMAGE_NAMES.join(", ")})`);
}

/** `--disk-name NAME`: a file name, no path. */
export function checkDiskName(name: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(name)) {
    throw new UsageError(`--disk-name: '${name}' is not a disk name (letters, digits, '.', '_', '-'; at most 64; no path)`);
  }
  return name;
}

export function keptDiskPath(cacheDir: string, name: string): string {
  return join(cacheDir, "disks", `${name}.qcow2`);
}

/** Which build of the base an overlay was made on: a kept overlay records it, a fast-start key names it. */
export function baseBuildId(manifest: { recipe: string; built: string }): string {
  return `${manifest.recipe} ${manifest.built}`;
}

export class OverlayError extends Error {}

export interface Overlay {
  path: string;
  /** Whether it was kept from an earlier run (--disk-name). */
  reused: boolean;
  /** Removes it unless kept. */
  dispose(): void;
  /** A thrown-away overlay made new again, on the same base (a kept one stays as it is). */
  renew(): void;
}

/**
 * The overlay a run boots from: a new one in a temporary directory, or the
 * kept one at `keptPath` (made there if it does not exist yet).
 */
export function makeOverlay(base: string, virtualSize: number, keptPath?: string, baseId = ""): Overlay {
  if (keptPath !== undefined) {
    // A kept overlay only makes sense on the very base it was made on: a
    // rebuilt base (image pull debian --force) has its blocks elsewhere.
    const idPath = `${keptPath}.base`;
    if (existsSync(keptPath)) {
      let id: string | undefined;
      try {
        id = readFileSync(idPath, "utf8").trim();
      } catch {
        // an overlay kept by hand, without its note: trusted
      }
      if (id !== undefined && id !== baseId) {
        throw new OverlayError(`${keptPath} was made on another build of the image (${id}, now ${baseId}): remove it, or use another --disk-name`);
      }
      return { path: keptPath, reused: true, dispose: () => {}, renew: () => {} };
    }
    createQcow2(keptPath, { size: virtualSize, backingFile: base, backingFormat: "qcow2" });
    writeFileSync(idPath, `${baseId}\n`);
    return { path: keptPath, reused: false, dispose: () => {}, renew: () => {} };
  }
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-overlay-"));
  const path = join(dir, "root.qcow2");
  try {
    createQcow2(path, { size: virtualSize, backingFile: base, backingFormat: "qcow2" });
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  return {
    path, reused: false,
    dispose: () => rmSync(dir, { recursive: true, force: true }),
    renew: () => {
      rmSync(path, { force: true });
      createQcow2(path, { size: virtualSize, backingFile: base, backingFormat: "qcow2" });
    },
  };
}
