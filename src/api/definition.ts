// A VM definition: what `tsvisor vm create` (POST /v1/vms) says about a VM,
// the same options as `tsvisor run`, plus scheduling and autostart. It is
// what the state directory keeps, so it is validated the same way whether it
// comes from a client or from a file.
import { VIRT_MAX_HARTS } from "../arch/riscv/layout.js";
import { MAX_WEIGHT, DEFAULT_WEIGHT } from "../host/scheduler.js";
import { checkDeviceSpecs } from "../cli/vm-devices.js";
import { IMAGE_NAMES, type ImageName } from "../cli/system-image.js";
import { ApiError } from "./errors.js";

export interface VmDefinition {
  name: string;
  cpus: number;
  memBytes: number;
  /** Absolute paths; without them the Debian image is pulled at start. */
  kernel?: string;
  /**
   * A system disk to boot (`vm create --image debian`): the daemon puts the
   * VM's own overlay on it first in `disks` (root-disk.ts); the Debian
   * kernel boots it as the root. Not with kernel or initrd.
   */
  image?: ImageName;
  initrd?: string;
  /** Kernel command line (default: run's). */
  append?: string;
  /** `--disk` and `--net` specs, as `tsvisor run` takes them (absolute paths). */
  disks: string[];
  nets: string[];
  /** `--share HOSTDIR:GUESTDIR[,ro]` specs (HOSTDIR absolute): virtio-fs devices share0... that init mounts. */
  shares: string[];
  console: "ttyS0" | "hvc0";
  /** The guest command (run -- CMD); none: a shell on the console. */
  command?: string[];
  weight: number;
  capPct: number;
  /** pCPUs the vCPUs may run on (empty: all). */
  affinity: number[];
  autostart: boolean;
  /** Page sharing across VMs of one group (none: within this VM only). */
  shareGroup?: string;
  /** A virtio-balloon the host can take memory back through (default true). */
  balloon: boolean;
  /**
   * The virtio-vsock device, as `tsvisor run --vsock PATH[,cid=N]` (PATH
   * absolute), or "none". Absent: the daemon gives the VM one of its own,
   * `<state dir>/vsock/<name>.sock` with CID 3, which `tsvisor vm exec` uses.
   */
  vsock?: string;
}

export interface HostLimits {
  pcpus: number;
  poolBytes: number;
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
export const MAX_NAME = 63;

/** A VM name: 1 to 63 letters, digits, '.', '_' or '-', not starting with a symbol. */
export function checkName(name: unknown): string {
  if (typeof name !== "string") throw new ApiError(400, "name: expected a string");
  if (name === "") throw new ApiError(400, "name: must not be empty");
  if (name.length > MAX_NAME) throw new ApiError(400, `name: at most ${MAX_NAME} characters, got ${name.length}`);
  if (name.includes("/")) throw new ApiError(400, `name '${name}': must not contain '/'`);
  if (!NAME_RE.test(name)) throw new ApiError(400, `name '${name}': only letters, digits, '.', '_' and '-', not starting with a symbol`);
  return name;
}

type Kind = "string" | "int" | "bool" | "string[]" | "int[]";

const CREATE_FIELDS: Record<string, Kind> = {
  name: "string", cpus: "int", memBytes: "int", kernel: "string", initrd: "string", image: "string", append: "string",
  disks: "string[]", nets: "string[]", shares: "string[]", console: "string", command: "string[]",
  weight: "int", capPct: "int", affinity: "int[]", autostart: "bool", shareGroup: "string", balloon: "bool", vsock: "string",
};

const PATCH_FIELDS: Record<string, Kind> = { weight: "int", capPct: "int", affinity: "int[]", autostart: "bool", balloonBytes: "int" };

/** The engine's bounds on a VM's memory (host/vm.ts): at most 64 GiB, and its
 *  p2m table (4 bytes a page) at most an eighth of the pool, so 128 times the pool. */
const MAX_VM_MEM_BYTES = 64 * 2 ** 30;
export function maxMemBytes(limits: HostLimits): number {
  return Math.min(MAX_VM_MEM_BYTES, limits.poolBytes * 128);
}

/** The body is an object with only known fields, each of its type. */
function checkFields(body: unknown, fields: Record<string, Kind>): Record<string, unknown> {
  if (typeof body !== "object" || body === null || Array.isArray(body)) throw new ApiError(400, "the body must be a JSON object");
  const obj = body as Record<string, unknown>;
  for (const [key, value] of Object.entries(obj)) {
    const kind = fields[key];
    if (!kind) throw new ApiError(400, `unknown field '${key}' (known: ${Object.keys(fields).join(", ")})`);
    const ok =
      kind === "string" ? typeof value === "string" :
      kind === "int" ? Number.isSafeInteger(value) :
      kind === "bool" ? typeof value === "boolean" :
      kind === "string[]" ? Array.isArray(value) && value.every((x) => typeof x === "string") :
      Array.isArray(value) && value.every((x) => Number.isSafeInteger(x));
    if (!ok) throw new ApiError(400, `field '${key}': expected ${kind === "int" ? "an integer" : kind === "bool" ? "a boolean" : kind === "string" ? "a string" : kind === "int[]" ? "an array of integers" : "an array of strings"}`);
  }
  return obj;
}

function checkAbsolute(field: string, path: string | undefined): void {
  if (path !== undefined && !path.startsWith("/")) throw new ApiError(400, `${field}: expected an absolute path, got '${path}'`);
}

export function checkWeight(w: number): void {
  if (w < 1 || w > MAX_WEIGHT) throw new ApiError(400, `weight: expected 1..${MAX_WEIGHT}, got ${w}`);
}

export function checkCap(cap: number, limits: HostLimits): void {
  const max = 100 * limits.pcpus;
  if (cap < 0 || cap > max) throw new ApiError(400, `capPct: expected 0 (none) .. ${max}, got ${cap}`);
}

export function checkAffinity(affinity: number[], limits: HostLimits): void {
  for (const p of affinity) {
    if (p < 0 || p >= limits.pcpus) throw new ApiError(400, `affinity: pCPU ${p} does not exist (the host has 0..${limits.pcpus - 1})`);
  }
}

/** A complete, checked definition from a create request (or a state file). */
export function parseDefinition(body: unknown, limits: HostLimits): VmDefinition {
  const b = checkFields(body, CREATE_FIELDS);
  const name = checkName(b.name);
  const def: VmDefinition = {
    name,
    cpus: (b.cpus as number | undefined) ?? 1,
    memBytes: (b.memBytes as number | undefined) ?? 512 << 20,
    disks: (b.disks as string[] | undefined) ?? [],
    nets: (b.nets as string[] | undefined) ?? [],
    shares: (b.shares as string[] | undefined) ?? [],
    console: ((b.console as string | undefined) ?? "ttyS0") as VmDefinition["console"],
    weight: (b.weight as number | undefined) ?? DEFAULT_WEIGHT,
    capPct: (b.capPct as number | undefined) ?? 0,
    affinity: (b.affinity as number[] | undefined) ?? [],
    autostart: (b.autostart as boolean | undefined) ?? false,
    balloon: (b.balloon as boolean | undefined) ?? true,
  };
  if (b.shareGroup !== undefined) def.shareGroup = checkShareGroup(b.shareGroup as string);
  for (const key of ["kernel", "initrd", "append"] as const) if (b[key] !== undefined) def[key] = b[key] as string;
  if (b.command !== undefined) def.command = b.command as string[];
  if (b.image !== undefined) {
    if (!(IMAGE_NAMES as readonly string[]).includes(b.image as string)) throw new ApiError(400, `image: unknown image '${b.image as string}' (known: ${IMAGE_NAMES.join(", ")})`);
    if (def.kernel !== undefined || def.initrd !== undefined) throw new ApiError(400, "image: it boots Debian's kernel and tsvisor's initramfs: no kernel or initrd with it");
    def.image = b.image as ImageName;
  }
  if (b.vsock !== undefined) def.vsock = b.vsock as string;
  if (def.cpus < 1 || def.cpus > VIRT_MAX_HARTS) throw new ApiError(400, `cpus: expected 1..${VIRT_MAX_HARTS}, got ${def.cpus}`);
  if (def.memBytes < 1 << 20 || def.memBytes % 4096 !== 0) throw new ApiError(400, "memBytes: a whole number of 4 KiB pages, at least 1 MiB");
  // More than the pool is fine (the memory manager makes room), up to the engine's bound.
  if (def.memBytes > maxMemBytes(limits)) {
    throw new ApiError(400, `memBytes: ${Math.floor(def.memBytes / (1 << 20))} MiB is too large for this host (at most ${Math.floor(maxMemBytes(limits) / (1 << 20))} MiB with a ${Math.floor(limits.poolBytes / (1 << 20))} MiB pool)`);
  }
  if (def.console !== "ttyS0" && def.console !== "hvc0") throw new ApiError(400, `console: expected ttyS0 or hvc0, got '${def.console}'`);
  if (def.command !== undefined && def.command.length === 0) throw new ApiError(400, "command: empty (leave it out for a shell)");
  checkAbsolute("kernel", def.kernel);
  checkAbsolute("initrd", def.initrd);
  for (const d of def.disks) checkAbsolute("disks", d.split(",")[0]);
  for (const s of def.shares) checkAbsolute("shares", s.split(":")[0]);
  if (def.vsock !== undefined && def.vsock !== "none") checkAbsolute("vsock", def.vsock.split(",")[0]);
  try {
    checkDeviceSpecs(def.disks, def.nets, def.shares, def.vsock === "none" ? undefined : def.vsock);
  } catch (e) {
    throw new ApiError(400, (e as Error).message);
  }
  checkWeight(def.weight);
  checkCap(def.capPct, limits);
  checkAffinity(def.affinity, limits);
  return def;
}

/** A share group's name: as a VM's (1 to 63 letters, digits, '.', '_' or '-'). */
export function checkShareGroup(group: string): string {
  if (group === "" || group.length > MAX_NAME || !NAME_RE.test(group)) {
    throw new ApiError(400, `shareGroup '${group}': 1 to ${MAX_NAME} letters, digits, '.', '_' or '-', not starting with a symbol`);
  }
  return group;
}

export interface VmPatch {
  weight?: number;
  capPct?: number;
  affinity?: number[];
  autostart?: boolean;
  /** The balloon's target (running VMs only; not kept in the definition). */
  balloonBytes?: number;
}

export function parsePatch(body: unknown, limits: HostLimits): VmPatch {
  const b = checkFields(body, PATCH_FIELDS) as VmPatch;
  if (b.weight !== undefined) checkWeight(b.weight);
  if (b.capPct !== undefined) checkCap(b.capPct, limits);
  if (b.affinity !== undefined) checkAffinity(b.affinity, limits);
  if (b.balloonBytes !== undefined && b.balloonBytes < 0) throw new ApiError(400, `balloonBytes: expected 0 or more, got ${b.balloonBytes}`);
  return b;
}
