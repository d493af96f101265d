// `tsvisor image pull debian`: a Debian system on a disk, built as
// debootstrap builds one, in two stages.
//
// First stage, on the host (no riscv64 code runs):
//   - apt, with the private configuration of apt.ts, resolves the package set
//     (priority required and important, as debootstrap's default variant,
//     plus SYSTEM_EXTRA_PACKAGES) against an empty dpkg status and downloads
//     it; apt checks every .deb against the signed lists.
//   - each .deb is unpacked into a tree (as root: ownership kept) on merged
//     /usr, its control files go to /var/lib/dpkg/info, its conffiles are
//     left as <conffile>.dpkg-new, and /var/lib/dpkg/status marks it
//     "install ok unpacked": the state dpkg --unpack leaves (multistrap does
//     the same).
//   - mke2fs -d makes an ext4 file system of the tree in a raw file.
// Second stage, in a tsvisor guest (tsvisor's kernel and busybox initramfs
// with the raw file as /dev/vda): mount it, chroot, run the preinst scripts,
// `dpkg --configure -a` (the postinst scripts), then set up the console
// login, hostname and network (SECOND_STAGE). The raw image is then copied
// into a qcow2 base image in the cache:
//   <cache>/images/debian-<suite>-riscv64-system/{root.qcow2, manifest.json}
// `tsvisor run --image debian` boots it through an overlay (cli/run-linux.ts).

import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { chmod, copyFile, mkdir, readFile, readdir, rename, rm, stat, symlink, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { projectRoot } from "../project-root.js";
import { PrivateApt, parseControl, type AptSource } from "./apt.js";
import { DEBIAN_MIRROR, DEBIAN_SUITE, pullContext, pullDebianImage, type PullOptions } from "./debian.js";
import { ImageError } from "./errors.js";
import { readDecompressedMany, runOrFail, runTool } from "./host-tools.js";
import { MODULE_STRIP_VERSION, stripModule } from "./module-strip.js";
import { makeBuildDir, makeDirectories, removeAbandonedBuilds, writeDurably } from "./image-cache.js";
import { rawToQcow2 } from "./qcow2-convert.js";

/** What the brief of the image names on top of debootstrap's required + important. */
export const SYSTEM_EXTRA_PACKAGES = [
  "apt", "systemd", "systemd-sysv", "bash", "coreutils", "iproute2", "ifupdown", "dhcpcd-base", "iputils-ping", "ca-certificates", "netbase",
];
export const SYSTEM_DISK_FILE = "root.qcow2";
export const SYSTEM_MANIFEST_FILE = "manifest.json";
/** The root file system's size as the guest sees it (the qcow2 file holds only what is used). */
export const SYSTEM_DISK_BYTES = 4 * 2 ** 30;
export const SYSTEM_HOSTNAME = "debian";

export interface SystemManifest {
  format: 1;
  recipe: string;
  source: { mirror: string; suite: string; arch: string };
  /** The kernel the image was configured with (its modules are not on the disk). */
  kernelVersion: string;
  packages: { name: string; version: string; architecture: string }[];
  disk: { file: string; virtualSize: number; fileBytes: number };
  built: string;
  buildSeconds: number;
}

/** The kernel image pull's options (the system disk boots that kernel), and: */
export interface SystemPullOptions extends PullOptions {
  /** Node and tsvisor's bin/tsvisor.js, for the second stage (default: this tsvisor). */
  tsvisor?: string[];
}

export interface PulledSystem {
  diskPath: string;
  manifest: SystemManifest;
  fromCache: boolean;
}

export function debianSystemDir(cacheDir: string, suite = DEBIAN_SUITE): string {
  return join(cacheDir, "images", `debian-${suite}-riscv64-system`);
}

/** The names of the packages of priority required or important in apt-cache dumpavail's text, and the Essential ones. */
export function basePackageNames(dumpavail: string): string[] {
  const names = new Set<string>();
  for (const para of dumpavail.split(/\n\s*\n/)) {
    const f = parseControl(para);
    if (!f.Package) continue;
    if (f.Priority === "required" || f.Priority === "important" || f.Essential === "yes") names.add(f.Package);
  }
  return [...names].sort();
}

/** The identity of what builds the image: a change to any of it rebuilds. */
export function systemRecipe(): string {
  return createHash("sha256").update(JSON.stringify([1, MODULE_STRIP_VERSION, MODULES_LEFT_OUT, SYSTEM_EXTRA_PACKAGES, SYSTEM_DISK_BYTES, SECOND_STAGE, OUTER_STAGE, BASE_FILES])).digest("hex").slice(0, 16);
}

/** The cached system image, if complete and of this recipe (checked by size, not hashed: it is large). */
export async function checkCachedSystem(dir: string): Promise<SystemManifest | undefined> {
  try {
    const m = JSON.parse(await readFile(join(dir, SYSTEM_MANIFEST_FILE), "utf8")) as SystemManifest;
    if (m.format !== 1 || m.recipe !== systemRecipe()) return undefined;
    const s = await stat(join(dir, m.disk.file));
    return s.size === m.disk.fileBytes ? m : undefined;
  } catch {
    return undefined;
  }
}

export async function pullDebianSystem(opts: SystemPullOptions = {}): Promise<PulledSystem> {
  const { cacheDir, source, say, progress } = pullContext(opts);
  const dir = debianSystemDir(cacheDir, source.suite);
  if (!opts.force) {
    const cached = await checkCachedSystem(dir);
    if (cached) return { diskPath: join(dir, cached.disk.file), manifest: cached, fromCache: true };
  }
  const t0 = performance.now();
  // The kernel and initramfs that run the second stage.
  const kernelImage = await pullDebianImage({ cacheDir, mirror: opts.mirror, suite: opts.suite, progress: say, aptOutput: opts.aptOutput });
  let work: string | undefined;
  try {
    await removeAbandonedBuilds(cacheDir);
    work = await makeBuildDir(cacheDir);
    const apt = new PrivateApt(join(work, "apt"), source, opts.aptOutput ?? process.stderr.isTTY === true, progress);
    progress(`updating package lists from ${source.mirror} (${source.suite} ${source.component} ${source.arch})`);
    await apt.update();
    const names = [...new Set([...basePackageNames(await apt.dumpAvailable()), ...SYSTEM_EXTRA_PACKAGES])].sort();
    progress(`resolving and downloading ${names.length} packages and their dependencies (apt-get install --download-only)`);
    const debs = await apt.downloadWithDependencies(names, join(work, "debs"));
    progress(`downloaded ${debs.length} packages`);

    const root = join(work, "root");
    progress(`unpacking ${debs.length} packages`);
    const packages = await unpackAll(debs, root, progress);
    await writeBaseFiles(root, packages, source);
    await installKernelModules(apt, kernelImage.manifest.kernel, root, join(work, "kernel"), progress);

    const raw = join(work, "root.raw");
    progress(`making an ext4 file system of ${formatBytes(await treeBytes(root))} (mke2fs -d, ${SYSTEM_DISK_BYTES / 2 ** 30} GiB)`);
    await runOrFail("mke2fs", "mke2fs", [
      "-q", "-F", "-t", "ext4", "-L", "debian-root", "-E", "lazy_itable_init=0,lazy_journal_init=0", "-d", root, raw, `${SYSTEM_DISK_BYTES / 1024}k`,
    ]);
    await rm(root, { recursive: true, force: true });

    progress(`second stage: configuring the packages inside a tsvisor guest (dpkg --configure -a; this takes minutes)`);
    await secondStage(raw, kernelImage.kernelPath, kernelImage.initrdPath, opts.tsvisor ?? defaultTsvisor(), say);

    const out = join(work, "image");
    await mkdir(out);
    progress(`writing the qcow2 base image`);
    rawToQcow2(raw, join(out, SYSTEM_DISK_FILE));
    await rm(raw, { force: true });
    const fileBytes = (await stat(join(out, SYSTEM_DISK_FILE))).size;
    const manifest: SystemManifest = {
      format: 1,
      recipe: systemRecipe(),
      source: { mirror: source.mirror, suite: source.suite, arch: source.arch },
      kernelVersion: kernelImage.kernelVersion,
      packages: packages.map(({ name, version, architecture }) => ({ name, version, architecture })),
      disk: { file: SYSTEM_DISK_FILE, virtualSize: SYSTEM_DISK_BYTES, fileBytes },
      built: new Date().toISOString(),
      buildSeconds: Math.round((performance.now() - t0) / 1000),
    };
    await writeDurably(join(out, SYSTEM_MANIFEST_FILE), `${JSON.stringify(manifest, null, 2)}\n`);
    await makeDirectories(dirname(dir));
    if (existsSync(dir)) await rename(dir, join(work, "replaced"));
    await rename(out, dir);
    progress(`Debian system image ready in ${dir} (${packages.length} packages, ${formatBytes(fileBytes)} qcow2, built in ${manifest.buildSeconds} s)`);
    return { diskPath: join(dir, SYSTEM_DISK_FILE), manifest, fromCache: false };
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (!(e instanceof ImageError) && typeof code === "string") throw new ImageError(`cannot write the image cache in ${cacheDir}: ${(e as Error).message}`);
    throw e;
  } finally {
    if (work) await rm(work, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------- first stage

export interface UnpackedPackage {
  name: string;
  version: string;
  architecture: string;
  /** The name of its files in /var/lib/dpkg/info: name:arch for Multi-Arch: same. */
  infoName: string;
  /** Its control paragraph. */
  control: Record<string, string>;
  conffiles: string[];
  hasPreinst: boolean;
}

/** debootstrap's merged /usr: these are symlinks into /usr before anything is unpacked. */
const MERGED_USR = ["bin", "sbin", "lib"];

async function unpackAll(debs: string[], root: string, progress: (l: string) => void): Promise<UnpackedPackage[]> {
  await mkdir(join(root, "usr"), { recursive: true });
  for (const d of MERGED_USR) {
    await mkdir(join(root, "usr", d), { recursive: true });
    await symlink(`usr/${d}`, join(root, d));
  }
  const info = join(root, "var/lib/dpkg/info");
  await mkdir(info, { recursive: true });
  for (const d of ["updates", "triggers", "alternatives", "parts"]) await mkdir(join(root, "var/lib/dpkg", d), { recursive: true });
  const packages: UnpackedPackage[] = [];
  let n = 0;
  for (const deb of debs) {
    const pkg = await unpackOne(deb, root, info);
    packages.push(pkg);
    if (++n % 25 === 0 || n === debs.length) progress(`unpacked ${n}/${debs.length} (${pkg.name})`);
  }
  await writeFile(join(root, "var/lib/dpkg/status"), statusFile(packages));
  await writeFile(join(root, "var/lib/dpkg/available"), "");
  return packages;
}

async function unpackOne(deb: string, root: string, info: string): Promise<UnpackedPackage> {
  const ctrlDir = `${deb}.control`;
  await runOrFail(`dpkg-deb -e ${deb}`, "dpkg-deb", ["-e", deb, ctrlDir]);
  const control = parseControl(await readFile(join(ctrlDir, "control"), "utf8"));
  const name = control.Package;
  const architecture = control.Architecture;
  if (!name || !control.Version || !architecture) throw new ImageError(`${deb}: its control file has no Package, Version or Architecture`);
  const infoName = control["Multi-Arch"] === "same" ? `${name}:${architecture}` : name;
  // Extract as dpkg would (as root: owners and modes kept), onto the merged-/usr symlinks; -v lists the members.
  const r = await runTool("sh", ["-c", 'dpkg-deb --fsys-tarfile "$1" | tar -x -v -p --same-owner --keep-directory-symlink -C "$2"', "sh", deb, root]);
  if (r.status !== 0) throw new ImageError(`unpacking ${deb} failed: ${r.stderr.trim().split("\n")[0] ?? `status ${r.status}`}`);
  const list = dpkgList(r.stdout.toString("utf8"));
  const conffiles = (existsSync(join(ctrlDir, "conffiles")) ? await readFile(join(ctrlDir, "conffiles"), "utf8") : "")
    .split("\n").map((l) => l.trim()).filter((l) => l.startsWith("/"));
  // dpkg --unpack leaves a new conffile as <name>.dpkg-new; --configure moves it into place.
  for (const c of conffiles) {
    if (existsSync(join(root, c))) await rename(join(root, c), join(root, `${c}.dpkg-new`));
  }
  let hasPreinst = false;
  for (const f of await readdir(ctrlDir)) {
    if (f === "control") continue;
    if (f === "preinst") hasPreinst = true;
    await copyFile(join(ctrlDir, f), join(info, `${infoName}.${f}`));
    await chmod(join(info, `${infoName}.${f}`), (await stat(join(ctrlDir, f))).mode & 0o7777);
  }
  await writeFile(join(info, `${infoName}.list`), list.map((l) => `${l}\n`).join(""));
  await rm(ctrlDir, { recursive: true, force: true });
  return { name, version: control.Version, architecture, infoName, control, conffiles, hasPreinst };
}

/** tar's member names ("./", "./usr/", "./usr/bin/x") as dpkg's .list file has them ("/.", "/usr", "/usr/bin/x"). */
export function dpkgList(tarNames: string): string[] {
  const out: string[] = [];
  for (let line of tarNames.split("\n")) {
    if (line === "") continue;
    line = line.replace(/^\.\//, "/").replace(/^\.$/, "/");
    if (line === "/") out.push("/.");
    else out.push(line.replace(/\/+$/, ""));
  }
  return out;
}

/** Status paragraphs for packages unpacked, not configured: what dpkg --unpack records. */
export function statusFile(packages: UnpackedPackage[]): string {
  const paras: string[] = [];
  for (const p of packages) {
    const lines: string[] = [`Package: ${p.name}`, "Status: install ok unpacked"];
    for (const [k, v] of Object.entries(p.control)) {
      if (k === "Package" || k === "Status" || k === "Conffiles") continue;
      if (k === "Description") continue; // last, below
      lines.push(`${k}: ${continuation(v)}`);
    }
    if (p.conffiles.length > 0) lines.push(`Conffiles:\n${p.conffiles.map((c) => ` ${c} newconffile`).join("\n")}`);
    if (p.control.Description !== undefined) lines.push(`Description: ${continuation(p.control.Description)}`);
    paras.push(lines.join("\n"));
  }
  return paras.map((p) => `${p}\n`).join("\n");
}

/** parseControl joined continuation lines with "\n" and trimmed them; deb822 wants them indented (an empty one as " ."). */
function continuation(v: string): string {
  return v.split("\n").map((l, i) => (i === 0 ? l : ` ${l === "" ? "." : l}`)).join("\n");
}

/** Files the host writes into the tree before the second stage. */
const BASE_FILES: Record<string, string> = {
  "etc/hostname": `${SYSTEM_HOSTNAME}\n`,
  "etc/hosts": `127.0.0.1\tlocalhost\n127.0.1.1\t${SYSTEM_HOSTNAME}\n::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n`,
  "etc/fstab": "# <file system> <mount point> <type> <options> <dump> <pass>\n/dev/vda / ext4 rw,errors=remount-ro 0 0\n",
  // Resolved by the guest's DNS (the user-mode network's 10.0.2.3 answers from the host's resolver).
  "etc/apt/sources.list.d/debian.sources": `Types: deb\nURIs: ${DEBIAN_MIRROR}\nSuites: ${DEBIAN_SUITE}\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n`,
  // Maintainer scripts must not start services in the chroot (invoke-rc.d asks policy-rc.d; 101: action forbidden).
  "usr/sbin/policy-rc.d": "#!/bin/sh\nexit 101\n",
};

async function writeBaseFiles(root: string, packages: UnpackedPackage[], source: AptSource): Promise<void> {
  for (const [path, text] of Object.entries(BASE_FILES)) {
    await mkdir(dirname(join(root, path)), { recursive: true });
    await writeFile(join(root, path), path === "etc/apt/sources.list.d/debian.sources" ? text.replace(DEBIAN_SUITE, source.suite) : text);
  }
  await chmod(join(root, "usr/sbin/policy-rc.d"), 0o755);
  // /bin/sh: shipped by dash in trixie; else made as debootstrap does.
  if (!existsSync(join(root, "usr/bin/sh"))) await symlink("dash", join(root, "usr/bin/sh"));
  // The order preinst scripts run in: base-passwd (it makes /etc/passwd and /etc/group) and base-files first.
  const first = ["base-passwd", "base-files"];
  const order = [...packages].sort((a, b) => rank(a.name) - rank(b.name) || a.name.localeCompare(b.name));
  function rank(n: string): number {
    const i = first.indexOf(n);
    return i < 0 ? first.length : i;
  }
  await writeFile(join(root, "tsvisor-preinst"), order.filter((p) => p.hasPreinst).map((p) => `${p.infoName} ${p.version}\n`).join(""));
  await writeFile(join(root, "tsvisor-second-stage"), SECOND_STAGE, { mode: 0o755 });
}

/**
 * The kernel's modules, for the kernel tsvisor boots the disk with: from the
 * same package as the initramfs's, stripped as those are (module-strip.ts:
 * loads several times faster; unsigned), uncompressed; the second stage's
 * depmod writes modules.dep. Without them, only what the initramfs loaded
 * before systemd took over would be there.
 */
async function installKernelModules(
  apt: PrivateApt, kernel: { package: string; version: string; kernelVersion: string }, root: string, work: string, progress: (l: string) => void,
): Promise<void> {
  const pkg = await apt.show(kernel.package);
  if (pkg.version !== kernel.version) {
    progress(`the archive has ${kernel.package} ${pkg.version}, the kernel image is ${kernel.version}: no kernel modules on the disk`);
    return;
  }
  progress(`downloading ${pkg.name} ${pkg.version} for its modules`);
  const deb = await apt.download(pkg, join(work, "deb"));
  const kroot = join(work, "root");
  await runOrFail(`dpkg-deb -x ${deb}`, "dpkg-deb", ["-x", deb, kroot]);
  const src = join(kroot, "usr/lib/modules", kernel.kernelVersion);
  const dest = join(root, "usr/lib/modules", kernel.kernelVersion);
  const files = await walkFiles(src);
  const modules = files.filter((f) => /\.ko(\.xz|\.zst|\.gz)?$/.test(f) && !MODULES_LEFT_OUT.some((d) => f.startsWith(d)));
  progress(`stripping ${modules.length} kernel modules into /usr/lib/modules/${kernel.kernelVersion}`);
  for (const f of files.filter((f) => !modules.includes(f) && !f.startsWith("build") && !f.startsWith("source"))) {
    await mkdir(dirname(join(dest, f)), { recursive: true });
    await copyFile(join(src, f), join(dest, f));
  }
  const writes: Promise<void>[] = [];
  await readDecompressedMany(modules.map((m) => join(src, m)), (path, bytes) => {
    const rel = path.slice(src.length + 1).replace(/\.(xz|zst|gz)$/, "");
    const out = join(dest, rel);
    writes.push(mkdir(dirname(out), { recursive: true }).then(() => writeFile(out, stripModule(bytes, path).bytes)));
  });
  await Promise.all(writes);
  await rm(work, { recursive: true, force: true });
}

/**
 * Drivers for hardware tsvisor's virt machine cannot have (graphics, cameras
 * and TV, sound, Wi-Fi and Ethernet chips, USB, InfiniBand, Bluetooth,
 * sensors, staging): 200 of the 320 MiB the stripped modules take. Their
 * names stay in modules.order and modules.builtin; modprobe says not found.
 */
export const MODULES_LEFT_OUT = [
  "kernel/drivers/gpu/", "kernel/drivers/media/", "kernel/sound/", "kernel/drivers/net/wireless/", "kernel/drivers/net/ethernet/",
  "kernel/drivers/usb/", "kernel/drivers/infiniband/", "kernel/drivers/bluetooth/", "kernel/drivers/iio/", "kernel/drivers/staging/",
  "kernel/drivers/hwmon/", "kernel/drivers/net/can/", "kernel/net/bluetooth/", "kernel/net/wireless/", "kernel/net/mac80211/",
];

async function walkFiles(dir: string, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(join(dir, prefix), { withFileTypes: true })) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    if (e.isDirectory()) out.push(...(await walkFiles(dir, rel)));
    else if (e.isFile()) out.push(rel);
  }
  return out;
}

async function treeBytes(root: string): Promise<number> {
  const r = await runTool("du", ["-s", "-B1", root]);
  return Number(r.stdout.toString().split(/\s/)[0]) || 0;
}

// --------------------------------------------------------------- second stage

/** Runs inside the chroot, as /tsvisor-second-stage. */
export const SECOND_STAGE = `#!/bin/sh
export DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true DEBCONF_NOWARNINGS=yes
export LC_ALL=C LANGUAGE=C LANG=C PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
say() { echo "second stage: $*"; }
say "running $(wc -l < /tsvisor-preinst) preinst scripts"
while read -r pkg version; do
  DPKG_MAINTSCRIPT_PACKAGE=\${pkg%%:*} DPKG_MAINTSCRIPT_NAME=preinst DPKG_ROOT= \\
    /var/lib/dpkg/info/$pkg.preinst install </dev/null || say "preinst of $pkg failed (status $?)"
done < /tsvisor-preinst
say "configuring $(grep -c '^Status: install ok unpacked' /var/lib/dpkg/status) packages (dpkg --configure -a)"
tries=0
until dpkg --force-confold --configure -a </dev/null; do
  tries=$((tries + 1))
  if [ $tries -ge 3 ]; then say "dpkg --configure -a failed"; exit 1; fi
  say "dpkg --configure -a failed; again (as debootstrap does)"
done
ldconfig
for k in /usr/lib/modules/*; do [ -d "$k" ] && say "depmod \${k##*/}" && depmod -a "\${k##*/}"; done
say "setting up the console, hostname and network"
passwd -d root >/dev/null
for tty in ttyS0 hvc0; do
  mkdir -p /etc/systemd/system/serial-getty@$tty.service.d
  cat > /etc/systemd/system/serial-getty@$tty.service.d/autologin.conf <<EOF
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --noclear --keep-baud 115200,57600,38400,9600 - \\$TERM
EOF
done
cat > /etc/network/interfaces <<EOF
# The user-mode network (tsvisor run --net user) answers DHCP on eth0.
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback

auto eth0
iface eth0 inet dhcp
EOF
# No virtual terminals on tsvisor's machine: no gettys on tty2..tty6.
systemctl mask getty-static.service >/dev/null 2>&1 || true
[ -e /etc/default/locale ] || echo LANG=C.UTF-8 > /etc/default/locale
[ -e /etc/mtab ] || ln -s ../proc/self/mounts /etc/mtab
# Each VM makes its own machine ID at boot (machine-id(5): an empty file).
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
apt-get clean
rm -f /usr/sbin/policy-rc.d /tsvisor-preinst /tsvisor-second-stage
bad=$(dpkg-query -W -f='\${db:Status-Abbrev} \${Package}\\n' | grep -v '^ii ' || true)
if [ -n "$bad" ]; then say "not configured:"; echo "$bad"; exit 1; fi
say "$(dpkg-query -W | wc -l) packages configured"
`;

/** Runs in tsvisor's busybox initramfs: mounts the disk and chroots into the second stage. */
export const OUTER_STAGE = `set -e
mount -t ext4 /dev/vda /mnt
mount -t proc proc /mnt/proc
mount -t sysfs sysfs /mnt/sys
mount -o bind /dev /mnt/dev
mount -t devpts devpts /mnt/dev/pts
mount -t tmpfs tmpfs /mnt/run
mount -t tmpfs tmpfs /mnt/tmp
set +e
chroot /mnt /tsvisor-second-stage 2>&1
status=$?
umount /mnt/tmp /mnt/run /mnt/dev/pts /mnt/dev /mnt/sys /mnt/proc
umount /mnt || status=1
exit $status
`;

function defaultTsvisor(): string[] {
  return [process.execPath, join(projectRoot(), "bin", "tsvisor.js")];
}

/** Boots tsvisor's own guest with `raw` as /dev/vda and runs the second stage; its output goes to `say` line by line. */
function secondStage(raw: string, kernel: string, initrd: string, tsvisor: string[], say: (l: string) => void): Promise<void> {
  const args = [
    ...tsvisor.slice(1), "run", "--kernel", kernel, "--initrd", initrd, "--cpus", "2", "--mem", "1G", "--net", "none", "--no-snapshot",
    "--disk", `${raw},format=raw,cache=unsafe`, "--", "sh", "-c", OUTER_STAGE,
  ];
  return new Promise((resolve, reject) => {
    const child = spawn(tsvisor[0], args, { stdio: ["ignore", "pipe", "pipe"] });
    let tail: string[] = [];
    const onData = (prefix: string) => {
      let partial = "";
      return (b: Buffer) => {
        const lines = (partial + b.toString("utf8")).split("\n");
        partial = lines.pop() ?? "";
        for (const l of lines) {
          const line = l.replace(/\r$/, "");
          if (line === "") continue;
          tail = [...tail.slice(-19), line];
          say(`${prefix}${line}`);
        }
      };
    };
    child.stdout.on("data", onData("  guest: "));
    child.stderr.on("data", onData("  "));
    child.on("error", (e) => reject(new ImageError(`cannot start tsvisor for the second stage: ${e.message}`)));
    child.on("close", (status) => {
      if (status === 0) resolve();
      else reject(new ImageError(`the second stage failed (status ${status}); its last line: ${tail[tail.length - 1] ?? "(none)"}`));
    });
  });
}

function formatBytes(n: number): string {
  return n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(1)} GiB` : `${Math.round(n / 2 ** 20)} MiB`;
}
