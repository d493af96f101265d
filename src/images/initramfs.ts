// tsvisor's initramfs for a stock distribution kernel: busybox, tsvisor's
// /init, and the kernel modules a virt machine needs (virtio transport and
// devices, the filesystems a user would mount), with modules.dep and
// modules.alias so busybox's modprobe and the kernel's request_module() find
// them, and /etc/filesystems so mount without -t finds their filesystems;
// and the guest agent of `tsvisor vm exec` when it could be built (agent.ts).
// Written uncompressed (cpio newc): the kernel needs no decompressor and the
// guest spends no instructions inflating it.

import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { CpioArchive } from "./cpio.js";
import { ImageError } from "./errors.js";
import { INIT_PATH, INIT_SCRIPT } from "./init.js";
import { ModuleIndex, builtinNames, filterModulesOrder, modulesAlias, modulesDep } from "./kernel-modules.js";
import { MODULE_STRIP_VERSION, stripModule } from "./module-strip.js";
import { AGENT_PATH, agentRecipe } from "./agent.js";

/**
 * The modules of a virt machine's devices and of common filesystems. fuse
 * and virtiofs (`--share`) are built into Debian's riscv64 kernel (its
 * modules.builtin lists kernel/fs/fuse/fuse.ko and virtiofs.ko): named here
 * all the same, so a kernel that has them as modules gets them.
 */
export const INITRAMFS_MODULES = [
  "virtio_mmio", "virtio_blk", "virtio_net", "virtio_rng", "virtio_balloon", "virtio_input",
  "vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport", "9pnet_virtio", "9p", "fuse", "virtiofs", "virtio_scsi", "sd_mod",
  "ext4", "vfat", "nls_cp437", "nls_ascii", "nls_utf8", "nls_iso8859-1",
  "isofs", "squashfs", "overlay", "xfs", "btrfs",
];

/**
 * Filesystems on a block device, in the order /etc/filesystems lists them
 * (the common first: busybox's mount without -t tries each in turn).
 * ext4's driver also mounts ext2 and ext3.
 */
export const BLOCK_FILESYSTEMS = ["ext4", "vfat", "iso9660", "squashfs", "xfs", "btrfs"];

const DIRECTORIES: [string, number][] = [
  ["bin", 0o755], ["dev", 0o755], ["proc", 0o555], ["sys", 0o555], ["tmp", 0o1777], ["run", 0o755],
  ["root", 0o700], ["mnt", 0o755], ["etc", 0o755], ["sbin", 0o755], ["usr/bin", 0o755], ["usr/sbin", 0o755],
];

/** Bump when buildInitramfs lays out the archive differently. */
const LAYOUT_VERSION = 2;

/**
 * What decides the initramfs besides the packages: layout, init script,
 * module list and how modules are rewritten. A cached image made with another
 * recipe is rebuilt.
 */
export function initramfsRecipe(modules: string[] = INITRAMFS_MODULES): string {
  // The guest agent's source and whether this machine can build it: an image made without it is rebuilt once it can be.
  return createHash("sha256").update(JSON.stringify([LAYOUT_VERSION, INIT_SCRIPT, modules, MODULE_STRIP_VERSION, agentRecipe()])).digest("hex").slice(0, 16);
}

export interface InitramfsOptions {
  /** A static RISC-V busybox (Debian's busybox-static), becomes /bin/busybox. */
  busybox: Uint8Array;
  /** The directory holding <kernelVersion>/kernel/... (a package's usr/lib/modules). */
  modulesRoot: string;
  kernelVersion: string;
  /** Module names or aliases; default INITRAMFS_MODULES. */
  modules?: string[];
  /** The guest agent (agent.ts), a static riscv64 executable: /bin/tsvisor-agent. */
  agent?: Uint8Array;
}

export interface Initramfs {
  cpio: Uint8Array;
  /** Module files included, relative to /lib/modules/<kernelVersion>, in load order. */
  modules: string[];
}

export async function buildInitramfs(opts: InitramfsOptions): Promise<Initramfs> {
  checkBusybox(opts.busybox);
  if (!/^[\w.+~-]+$/.test(opts.kernelVersion)) throw new ImageError(`kernel version ${JSON.stringify(opts.kernelVersion)} is not a directory name`);
  const versionDir = join(opts.modulesRoot, opts.kernelVersion);
  const builtinText = await readOptional(join(versionDir, "modules.builtin"));
  const orderText = await readOptional(join(versionDir, "modules.order"));
  const index = await ModuleIndex.fromDirectory(versionDir, builtinNames(builtinText));
  const { modules } = await index.resolve(opts.modules ?? INITRAMFS_MODULES);

  const a = new CpioArchive();
  for (const [dir, perm] of DIRECTORIES) a.directory(dir, perm);
  // The kernel opens /dev/console for init's stdin/stdout/stderr before
  // devtmpfs is mounted (init/main.c, console_on_rootfs).
  a.charDevice("dev/console", 5, 1, 0o600);
  a.file("bin/busybox", opts.busybox, 0o755);
  a.symlink("bin/sh", "busybox");
  a.file(INIT_PATH.slice(1), INIT_SCRIPT, 0o755);
  if (opts.agent) a.file(AGENT_PATH.slice(1), opts.agent, 0o755);
  // busybox's mount without -t tries the types /etc/filesystems and then
  // /proc/filesystems list (util-linux/mount.c, get_block_backed_filesystems);
  // the kernel lists a filesystem only once its module is loaded, and loading
  // them all at boot would cost seconds. Listed here, a type's first mount
  // makes the kernel load its module (request_module("fs-NAME"), modprobe).
  a.file("etc/filesystems", etcFilesystems(modules.flatMap((m) => m.info.aliases)), 0o644);

  const libDir = `lib/modules/${opts.kernelVersion}`;
  a.directory(libDir, 0o755);
  for (const m of modules) {
    const bytes = await index.contents(m);
    const built = m.info.vermagic?.split(" ")[0];
    if (built !== opts.kernelVersion) throw new ImageError(`${join(versionDir, m.path)}: built for kernel ${built ?? "(no vermagic)"}, not ${opts.kernelVersion}`);
    // Without the assembler's unused local labels and, as a consequence,
    // unsigned: loads several times faster in the guest (module-strip.ts).
    a.file(`${libDir}/${m.path}`, stripModule(bytes, join(versionDir, m.path)).bytes, 0o644);
  }
  a.file(`${libDir}/modules.dep`, modulesDep(modules));
  a.file(`${libDir}/modules.alias`, modulesAlias(modules));
  a.file(`${libDir}/modules.builtin`, builtinText);
  a.file(`${libDir}/modules.order`, filterModulesOrder(orderText, modules));
  return { cpio: a.toBytes(), modules: modules.map((m) => m.path) };
}

/**
 * /etc/filesystems: the BLOCK_FILESYSTEMS some module of the image provides
 * (an alias fs-NAME, MODULE_ALIAS_FS), one a line.
 */
export function etcFilesystems(aliases: string[]): string {
  const provided = new Set(aliases.filter((a) => a.startsWith("fs-")).map((a) => a.slice(3)));
  return BLOCK_FILESYSTEMS.filter((fs) => provided.has(fs)).map((fs) => `${fs}\n`).join("");
}

export { commandArchive, shellQuote } from "./command-archive.js";

// e_ident, e_type and e_machine of the ELF header (System V gABI).
const EM_RISCV = 243;

function checkBusybox(b: Uint8Array): void {
  const elf = b.length >= 64 && b[0] === 0x7f && b[1] === 0x45 && b[2] === 0x4c && b[3] === 0x46;
  const type = elf ? b[16] | (b[17] << 8) : 0;
  const machine = elf ? b[18] | (b[19] << 8) : 0;
  if (!elf || b[4] !== 2 || b[5] !== 1 || (type !== 2 && type !== 3) || machine !== EM_RISCV) {
    throw new ImageError("busybox: not a 64-bit RISC-V ELF executable (expected Debian's busybox-static for riscv64)");
  }
}

async function readOptional(path: string): Promise<string> {
  try {
    return await readFile(path, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return "";
    throw new ImageError(`cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}
