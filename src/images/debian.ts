// `tsvisor image pull`: Debian's stock riscv64 kernel and tsvisor's initramfs.
//
// From the Debian archive (suite trixie, component main, riscv64), with apt
// and a private configuration (apt.ts):
//   linux-image-riscv64  a metapackage whose Depends names the real kernel
//                        package, linux-image-<version>-riscv64: boot/vmlinux-<version>
//                        (an uncompressed Image with an EFI stub) and
//                        usr/lib/modules/<version>/kernel/**.ko.xz, without modules.dep
//   busybox-static       usr/bin/busybox, statically linked
// The kernel is copied as Image; busybox, tsvisor's init and the modules go
// into initramfs.cpio (initramfs.ts). The result is cached (image-cache.ts):
// a second pull verifies the files against the manifest and uses no network.

import { mkdir, readdir, readFile, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { PrivateApt, isIndexMismatch, type AptSource, type PackageRecord } from "./apt.js";
import { ImageError } from "./errors.js";
import { PINNED_BUSYBOX, PINNED_KERNEL, PINNED_SUITE, downloadPinned, type PinnedPackage } from "./debian-pinned.js";
import { runOrFail } from "./host-tools.js";
import { INITRAMFS_MODULES, buildInitramfs, initramfsRecipe } from "./initramfs.js";
import { buildAgent } from "./agent.js";
import {
  DEBIAN_SUITE, INITRD_FILE, KERNEL_FILE, MANIFEST_FILE, checkCachedImage, debianImageDir, defaultCacheDir, makeBuildDir, publishImage,
  removeAbandonedBuilds, sha256, writeDurably, type ImageManifest,
} from "./image-cache.js";

export const DEBIAN_MIRROR = "http://deb.debian.org/debian";
export { DEBIAN_SUITE, debianImageDir };
const KERNEL_METAPACKAGE = "linux-image-riscv64";
const BUSYBOX_PACKAGE = "busybox-static";

export interface PullOptions {
  /** Default: $TSVISOR_CACHE, $XDG_CACHE_HOME/tsvisor or ~/.cache/tsvisor. */
  cacheDir?: string;
  /** Rebuild even if the cached image is intact. */
  force?: boolean;
  mirror?: string;
  suite?: string;
  /** One line per step; default: written to stderr. */
  progress?: (line: string) => void;
  /** Show apt's own progress on stderr; default: when stderr is a terminal. */
  aptOutput?: boolean;
}

export interface PulledImage {
  kernelPath: string;
  initrdPath: string;
  kernelVersion: string;
  fromCache: boolean;
  manifest: ImageManifest;
}

/** What every pull starts from: the cache, the archive to fetch from, and its progress lines. */
export function pullContext(opts: PullOptions): { cacheDir: string; source: AptSource; say: (line: string) => void; progress: (line: string) => void } {
  const source: AptSource = { mirror: (opts.mirror ?? DEBIAN_MIRROR).replace(/\/+$/, ""), suite: opts.suite ?? DEBIAN_SUITE, component: "main", arch: "riscv64" };
  const say = opts.progress ?? ((line: string) => process.stderr.write(`${line}\n`));
  return { cacheDir: opts.cacheDir ?? defaultCacheDir(), source, say, progress: (line) => say(`tsvisor image: ${line}`) };
}

export async function pullDebianImage(opts: PullOptions = {}): Promise<PulledImage> {
  const { cacheDir, source, progress } = pullContext(opts);
  const imageDir = debianImageDir(cacheDir, source.suite);

  const recipe = initramfsRecipe();
  if (!opts.force) {
    const cached = await checkCachedImage(imageDir, recipe);
    if (cached.ok) return result(imageDir, cached.manifest, true);
    if (cached.exists) progress(`cached image in ${imageDir} is broken (${cached.reason}); rebuilding`);
  }

  let work: string | undefined;
  try {
    await removeAbandonedBuilds(cacheDir);
    work = await makeBuildDir(cacheDir);
    const built = join(work, "image");
    const manifest = await buildImage(work, built, source, recipe, progress, opts.aptOutput ?? process.stderr.isTTY === true);
    const published = await publishImage(built, imageDir, join(work, "replaced"), recipe, opts.force === true);
    if (published !== "published") return result(imageDir, published, true); // another pull was first
    progress(`image ready in ${imageDir}`);
    return result(imageDir, manifest, false);
  } catch (e) {
    // File system trouble (no space, no permission) as one line too.
    const code = (e as NodeJS.ErrnoException).code;
    if (!(e instanceof ImageError) && typeof code === "string") throw new ImageError(`cannot write the image cache in ${cacheDir}: ${(e as Error).message}`);
    throw e;
  } finally {
    if (work) await rm(work, { recursive: true, force: true });
  }
}

/** Where pullDebianImage keeps the image of `suite` (riscv64). */

function result(dir: string, manifest: ImageManifest, fromCache: boolean): PulledImage {
  return { kernelPath: join(dir, KERNEL_FILE), initrdPath: join(dir, INITRD_FILE), kernelVersion: manifest.kernel.kernelVersion, fromCache, manifest };
}

/** Downloads, unpacks and writes Image, initramfs.cpio and manifest.json into `out`. */
async function buildImage(work: string, out: string, source: AptSource, recipe: string, progress: (l: string) => void, aptOutput: boolean): Promise<ImageManifest> {
  const apt = new PrivateApt(join(work, "apt"), source, aptOutput, progress);
  progress(`updating package lists from ${source.mirror} (${source.suite} ${source.component} ${source.arch})`);
  let kernelPkg: PackageRecord;
  let busyboxPkg: PackageRecord;
  let download: (pkg: PackageRecord, dir: string) => Promise<string>;
  try {
    await apt.update();
    const meta = await apt.show(KERNEL_METAPACKAGE);
    const kernelName = meta.depends.find((d) => d.startsWith("linux-image-"));
    if (!kernelName) throw new ImageError(`${KERNEL_METAPACKAGE} ${meta.version} depends on no linux-image-* package (Depends: ${meta.depends.join(", ")})`);
    kernelPkg = await apt.show(kernelName);
    busyboxPkg = await apt.show(BUSYBOX_PACKAGE);
    download = (pkg, dir) => apt.download(pkg, dir);
  } catch (e) {
    // A mirror whose lists do not match its signed Release: the pinned
    // packages (debian-pinned.ts says why they can be trusted).
    if (!(e instanceof ImageError) || !isIndexMismatch(e.message) || source.suite !== PINNED_SUITE) throw e;
    progress(`${e.message}`);
    progress(`the mirror's package lists do not match its signed Release; using the packages this tsvisor was tested with (pinned by SHA256)`);
    kernelPkg = PINNED_KERNEL;
    busyboxPkg = PINNED_BUSYBOX;
    download = (pkg, dir) => downloadPinned(source.mirror, pkg as PinnedPackage, dir, progress);
  }

  const kernelRoot = await fetchAndUnpack(download, kernelPkg, join(work, "kernel"), progress);
  const busyboxRoot = await fetchAndUnpack(download, busyboxPkg, join(work, "busybox"), progress);

  const kernelVersion = await onlyKernelVersion(join(kernelRoot, "usr/lib/modules"), kernelPkg);
  const kernel = await readKernelImage(kernelRoot, kernelVersion, kernelPkg);
  const busybox = await readFirst(busyboxRoot, ["usr/bin/busybox", "bin/busybox"], busyboxPkg);

  progress(`building the initramfs (busybox, init, ${INITRAMFS_MODULES.length} modules and their dependencies)`);
  const agent = buildAgent();
  if ("missing" in agent) progress(`no guest agent in this image (tsvisor vm exec will not work): ${agent.missing}`);
  const initramfs = await buildInitramfs({ busybox, modulesRoot: join(kernelRoot, "usr/lib/modules"), kernelVersion, agent: "binary" in agent ? agent.binary : undefined });

  const manifest: ImageManifest = {
    format: 1,
    recipe,
    source: { mirror: source.mirror, suite: source.suite, arch: source.arch },
    kernel: { package: kernelPkg.name, version: kernelPkg.version, kernelVersion },
    busybox: { package: busyboxPkg.name, version: busyboxPkg.version },
    files: {
      [KERNEL_FILE]: { sha256: sha256(kernel), size: kernel.length },
      [INITRD_FILE]: { sha256: sha256(initramfs.cpio), size: initramfs.cpio.length },
    },
    modules: initramfs.modules,
  };
  await mkdir(out);
  await writeDurably(join(out, KERNEL_FILE), kernel);
  await writeDurably(join(out, INITRD_FILE), initramfs.cpio);
  await writeDurably(join(out, MANIFEST_FILE), `${JSON.stringify(manifest, null, 2)}\n`);
  return manifest;
}

async function fetchAndUnpack(
  download: (pkg: PackageRecord, dir: string) => Promise<string>, pkg: PackageRecord, dir: string, progress: (l: string) => void,
): Promise<string> {
  progress(`downloading ${pkg.name} ${pkg.version} (${formatSize(pkg.size)})`);
  const deb = await download(pkg, join(dir, "deb"));
  progress(`unpacking ${pkg.name}`);
  const root = join(dir, "root");
  await runOrFail(`dpkg-deb -x ${deb}`, "dpkg-deb", ["-x", deb, root]);
  return root;
}

/** The one version directory the kernel package has under usr/lib/modules. */
async function onlyKernelVersion(modulesRoot: string, pkg: PackageRecord): Promise<string> {
  let versions: string[] = [];
  try {
    versions = await readdir(modulesRoot);
  } catch {
    // reported below
  }
  if (versions.length !== 1) throw new ImageError(`${pkg.name} ${pkg.version}: expected one kernel version in usr/lib/modules, found ${versions.length ? versions.join(", ") : "none"}`);
  return versions[0];
}

/**
 * boot/vmlinux-<version> (or vmlinuz-): a RISC-V Image (magic "RISCV\0\0\0" at
 * 0x30 and "RSC\x05" at 0x38, Documentation/arch/riscv/boot-image-header.rst),
 * an EFI zboot image ("zimg" at 4) or gzip, which the loader unpacks.
 */
async function readKernelImage(root: string, version: string, pkg: PackageRecord): Promise<Uint8Array> {
  const image = await readFirst(root, [`boot/vmlinux-${version}`, `boot/vmlinuz-${version}`], pkg);
  const ascii = (at: number, n: number) => String.fromCharCode(...image.subarray(at, at + n));
  const riscvImage = ascii(0x30, 8) === "RISCV\0\0\0" || ascii(0x38, 4) === "RSC\x05";
  const zboot = ascii(0, 2) === "MZ" && ascii(4, 4) === "zimg";
  const gzip = image[0] === 0x1f && image[1] === 0x8b;
  if (!riscvImage && !zboot && !gzip) throw new ImageError(`${pkg.name} ${pkg.version}: boot/vmlinux-${version} is not a RISC-V kernel image`);
  return image;
}

async function readFirst(root: string, candidates: string[], pkg: PackageRecord): Promise<Uint8Array> {
  for (const c of candidates) {
    const path = join(root, c);
    if (await stat(path).then((s) => s.isFile(), () => false)) return readFile(path);
  }
  throw new ImageError(`${pkg.name} ${pkg.version} has none of ${candidates.join(", ")}`);
}

function formatSize(bytes: number): string {
  return bytes >= 1e6 ? `${Math.round(bytes / 1e6)} MB` : `${Math.round(bytes / 1e3)} kB`;
}
