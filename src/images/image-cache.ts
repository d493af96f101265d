// The on-disk cache of pulled images:
//   <cache>/images/<name>/{Image, initramfs.cpio, manifest.json}
//   <cache>/tmp-<pid>-XXXXXX/   a build in progress
// <cache> is $TSVISOR_CACHE, else $XDG_CACHE_HOME/tsvisor, else ~/.cache/tsvisor
// (XDG Base Directory Specification).
//
// An image directory appears only complete: it is built inside a tmp
// directory, every file and the directory are fsynced, and it is renamed into
// place (rename(2) is atomic within a file system). The manifest records each
// file's SHA256, so a truncated or altered file is noticed and rebuilt.

import { createHash } from "node:crypto";
// fs.promises, read when first used: a run that finds its image pulled needs
// none of it (node:fs/promises took 1.6 ms of its start).
import { promises as fsp } from "node:fs";
import { homedir } from "node:os";
import { dirname, join } from "node:path";

export const KERNEL_FILE = "Image";
export const INITRD_FILE = "initramfs.cpio";
export const MANIFEST_FILE = "manifest.json";

export interface ImageManifest {
  format: 1;
  /** initramfsRecipe() of the tsvisor that built it */
  recipe: string;
  source: { mirror: string; suite: string; arch: string };
  kernel: { package: string; version: string; kernelVersion: string };
  busybox: { package: string; version: string };
  files: Record<typeof KERNEL_FILE | typeof INITRD_FILE, { sha256: string; size: number }>;
  /** Module files in the initramfs, relative to /lib/modules/<kernelVersion>. */
  modules: string[];
}

export function defaultCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.TSVISOR_CACHE) return env.TSVISOR_CACHE;
  if (env.XDG_CACHE_HOME) return join(env.XDG_CACHE_HOME, "tsvisor");
  return join(homedir(), ".cache", "tsvisor");
}

/** The Debian suite the stock guest comes from. */
export const DEBIAN_SUITE = "trixie";

/** Where the pulled stock image lives (images/debian.ts pulls it). Here, not
 *  there, so a run that finds it pulled does not load the pull's modules. */
export function debianImageDir(cacheDir: string, suite = DEBIAN_SUITE): string {
  return join(cacheDir, "images", `debian-${suite}-riscv64`);
}

export type CacheCheck = { ok: true; manifest: ImageManifest } | { ok: false; reason: string; exists: boolean };

/** Whether `dir` holds a complete image of this recipe whose files match its manifest. */
export async function checkCachedImage(dir: string, recipe: string): Promise<CacheCheck> {
  let manifest: ImageManifest;
  try {
    manifest = JSON.parse(await fsp.readFile(join(dir, MANIFEST_FILE), "utf8")) as ImageManifest;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") return { ok: false, reason: `no ${MANIFEST_FILE}`, exists: (await listOrNull(dir)) !== null };
    return { ok: false, reason: `unreadable ${MANIFEST_FILE} (${code ?? (e as Error).message})`, exists: true };
  }
  if (manifest?.format !== 1 || typeof manifest.kernel?.kernelVersion !== "string" || !manifest.files) {
    return { ok: false, reason: `${MANIFEST_FILE} is not a tsvisor image manifest`, exists: true };
  }
  if (manifest.recipe !== recipe) return { ok: false, reason: "made with another init or module list", exists: true };
  for (const name of [KERNEL_FILE, INITRD_FILE] as const) {
    const want = manifest.files[name]?.sha256;
    let got: string;
    try {
      got = sha256(await fsp.readFile(join(dir, name)));
    } catch (e) {
      return { ok: false, reason: `${name}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, exists: true };
    }
    if (got !== want) return { ok: false, reason: `${name} does not match its SHA256 in ${MANIFEST_FILE}`, exists: true };
  }
  return { ok: true, manifest };
}

/** A fresh build directory `<cache>/tmp-<pid>-XXXXXX`; the pid tells later runs whether it is abandoned. */
export async function makeBuildDir(cacheDir: string): Promise<string> {
  await makeDirectories(cacheDir);
  return fsp.mkdtemp(join(cacheDir, `tmp-${process.pid}-`));
}

/**
 * mkdir -p, one level at a time: Node 20's mkdir({ recursive: true }) spins
 * forever where mkdir(2) says ENOENT under an existing directory (in /proc).
 */
export async function makeDirectories(dir: string): Promise<void> {
  const parent = dirname(dir);
  try {
    await fsp.mkdir(dir);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "EEXIST") return;
    if (code !== "ENOENT" || parent === dir || (await listOrNull(parent)) !== null) throw e;
    await makeDirectories(parent);
    await fsp.mkdir(dir);
  }
}

/** Removes build directories of processes that no longer run (killed mid-pull). */
export async function removeAbandonedBuilds(cacheDir: string): Promise<void> {
  for (const name of (await listOrNull(cacheDir)) ?? []) {
    const m = /^tmp-(\d+)-/.exec(name);
    if (m && !processRuns(Number(m[1]))) await fsp.rm(join(cacheDir, name), { recursive: true, force: true });
  }
}

/** Writes a file and fsyncs it. */
export async function writeDurably(path: string, data: Uint8Array | string): Promise<void> {
  const f = await fsp.open(path, "w", 0o644);
  try {
    await f.writeFile(data);
    await f.sync();
  } finally {
    await f.close();
  }
}

/**
 * Moves the finished image directory `built` to `dest`. An image already at
 * `dest` is kept if intact and `replace` is false (another pull finished
 * first: its files may be in use), otherwise moved into `trash` (a path in
 * the build directory). Returns the manifest of the image now at `dest`.
 */
export async function publishImage(built: string, dest: string, trash: string, recipe: string, replace: boolean): Promise<ImageManifest | "published"> {
  await syncDirectory(built);
  await makeDirectories(dirname(dest));
  try {
    await fsp.rename(built, dest);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== "ENOTEMPTY" && code !== "EEXIST") throw e;
    const existing = await checkCachedImage(dest, recipe);
    if (existing.ok && !replace) return existing.manifest;
    await fsp.rename(dest, trash);
    await fsp.rename(built, dest);
  }
  await syncDirectory(dirname(dest));
  return "published";
}

export function sha256(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

async function syncDirectory(dir: string): Promise<void> {
  const d = await fsp.open(dir, "r");
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}

async function listOrNull(dir: string): Promise<string[] | null> {
  try {
    return await fsp.readdir(dir);
  } catch {
    return null;
  }
}

function processRuns(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM"; // exists, owned by someone else
  }
}
