// The .deb files this tsvisor release was tested with, pinned by SHA256: the
// fallback for a mirror whose package lists do not match its signed Release
// file (seen for days on a mirror that had the new point release's Release
// but the previous Packages). apt refuses such lists, rightly, and would
// leave the user with no image at all.
//
// Trust: each SHA256 below was taken from Debian's signed Packages index by
// an earlier `apt-get download` (the record a PackageRecord holds) and is
// part of tsvisor's own source, as a lock file's hashes are; a file whose
// size or hash differs is refused. Debian keeps superseded versions in the
// pool until the next archive clean-up, so the pin can go stale: then the
// error says so, and the pin is updated with the next release.

import { createHash } from "node:crypto";
import { createWriteStream } from "node:fs";
import { mkdir, rm } from "node:fs/promises";
import { basename, join } from "node:path";
import { get as httpGet } from "node:http";
import { get as httpsGet } from "node:https";
import type { IncomingMessage } from "node:http";
import type { PackageRecord } from "./apt.js";
import { ImageError } from "./errors.js";

export interface PinnedPackage extends PackageRecord {
  /** Path in the archive, as the Packages index's Filename field gives it. */
  filename: string;
}

/** trixie (Debian 13.7), riscv64. */
export const PINNED_KERNEL: PinnedPackage = {
  name: "linux-image-6.12.107+deb13-riscv64",
  version: "6.12.107-1",
  filename: "pool/main/l/linux/linux-image-6.12.107+deb13-riscv64_6.12.107-1_riscv64.deb",
  size: 112012420,
  sha256: "abe9f65d74b434692149482b031db7a2aaf832921e09f69f775293c0e0c5799c",
  depends: [],
};

export const PINNED_BUSYBOX: PinnedPackage = {
  name: "busybox-static",
  version: "1:1.37.0-6+b9",
  filename: "pool/main/b/busybox/busybox-static_1.37.0-6+b9_riscv64.deb",
  size: 941532,
  sha256: "4add476d2b185c5b487c285b38d790f0881a7e4a8e2ddde835f917e770eb8633",
  depends: [],
};

export const PINNED_SUITE = "trixie";

/**
 * Downloads `pkg` from `mirror` into `destDir` and checks size and SHA256
 * while it streams; returns the file's path. A partial or wrong file is
 * removed before the error is thrown.
 */
export async function downloadPinned(mirror: string, pkg: PinnedPackage, destDir: string, progress: (line: string) => void): Promise<string> {
  await mkdir(destDir, { recursive: true });
  const url = `${mirror}/${pkg.filename}`;
  const path = join(destDir, basename(pkg.filename));
  try {
    await streamToFile(url, path, pkg, progress);
  } catch (e) {
    await rm(path, { force: true });
    if (e instanceof ImageError) throw e;
    throw new ImageError(`downloading ${url} failed: ${(e as Error).message}`);
  }
  return path;
}

function streamToFile(url: string, path: string, pkg: PinnedPackage, progress: (line: string) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const get = url.startsWith("https:") ? httpsGet : httpGet;
    const req = get(url, { timeout: 60_000 }, (res: IncomingMessage) => {
      if (res.statusCode !== 200) {
        res.resume();
        const gone = res.statusCode === 404 ? " (the archive no longer has this version: this tsvisor's pinned packages are out of date)" : "";
        reject(new ImageError(`${url}: HTTP ${res.statusCode}${gone}`));
        return;
      }
      const hash = createHash("sha256");
      const out = createWriteStream(path);
      let received = 0;
      let shownTenth = 0;
      res.on("data", (chunk: Buffer) => {
        received += chunk.length;
        if (received > pkg.size) {
          req.destroy(new ImageError(`${url}: more than the pinned ${pkg.size} bytes`));
          return;
        }
        hash.update(chunk);
        const tenth = Math.floor((received / pkg.size) * 10);
        if (tenth > shownTenth && tenth < 10 && pkg.size > 10e6) {
          shownTenth = tenth;
          progress(`  ${tenth * 10}% of ${basename(pkg.filename)}`);
        }
      });
      res.pipe(out);
      res.on("error", reject);
      out.on("error", reject);
      out.on("finish", () => {
        if (received !== pkg.size) return reject(new ImageError(`${url}: ${received} bytes, pinned ${pkg.size}`));
        const sha256 = hash.digest("hex");
        if (sha256 !== pkg.sha256) return reject(new ImageError(`${url}: SHA256 ${sha256}, pinned ${pkg.sha256}`));
        resolve();
      });
    });
    req.on("timeout", () => req.destroy(new Error("no data for 60 s")));
    req.on("error", reject);
  });
}
