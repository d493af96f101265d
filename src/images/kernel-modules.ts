// Which kernel modules an initramfs needs and the files busybox's modprobe
// reads to load them, without running depmod (Debian's kernel package ships no
// modules.dep: its postinst runs depmod on the installed system).
//
// Formats (kmod's depmod(8) and modules.dep(5); busybox modutils/modprobe.c
// reads the same text files):
//   modules.dep    "kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/fs/mbcache.ko"
//                  every transitive dependency, paths relative to
//                  /lib/modules/<version>; modprobe loads the list from its
//                  end, so the last one has no dependency of its own.
//   modules.alias  "alias fs-ext4 ext4", "alias virtio:d00000002v* virtio_blk":
//                  what request_module() and `modprobe $(cat modalias)` ask for.
//   modules.builtin, modules.order: paths, one a line (kbuild writes them).
//
// Module files are read lazily: a kernel package holds thousands of
// compressed modules and an initramfs needs a few dozen, so a module's
// metadata is read only when a name leads to it, and the whole tree only when
// an alias has to be searched for.

import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { ImageError } from "./errors.js";
import { readDecompressed, readDecompressedMany } from "./host-tools.js";
import { readModinfo, type ModInfo } from "./modinfo.js";

export interface KernelModule {
  name: string;
  /** Relative to the version directory, always ending in ".ko". */
  path: string;
  info: ModInfo;
}

export interface ResolvedModules {
  /** The closure, each module after the modules it depends on. */
  modules: KernelModule[];
  /** Wanted names that are built into the kernel (nothing to load). */
  builtin: string[];
}

const MODULE_SUFFIX = /\.ko(\.xz|\.zst|\.gz)?$/;

/** Kernel module name of a path: base name, no suffix, "-" as "_" (KBUILD_MODNAME). */
export function moduleName(path: string): string {
  return (path.split("/").pop() ?? path).replace(MODULE_SUFFIX, "").replace(/-/g, "_");
}

/** Module names listed in a modules.builtin text. */
export function builtinNames(modulesBuiltin: string): Set<string> {
  return new Set(modulesBuiltin.split("\n").filter((l) => l.trim() !== "").map((l) => moduleName(l.trim())));
}

export class ModuleIndex {
  /** name -> path relative to the version directory as found (maybe compressed) */
  private readonly files = new Map<string, string>();
  private readonly infos = new Map<string, ModInfo>();
  private fullyRead = false;

  /**
   * @param files module files relative to `root` (.ko, .ko.xz, .ko.zst or .ko.gz)
   * @param builtin names of modules built into the kernel (modules.builtin)
   */
  constructor(readonly root: string, files: string[], readonly builtin: Set<string> = new Set()) {
    for (const f of files) {
      const name = moduleName(f);
      const other = this.files.get(name);
      if (other !== undefined) throw new ImageError(`${root}: two files for module ${name}: ${other} and ${f}`);
      this.files.set(name, f);
    }
  }

  /** Indexes every module file under a version directory (/lib/modules/<version>). */
  static async fromDirectory(versionDir: string, builtin?: Set<string>): Promise<ModuleIndex> {
    let entries: string[];
    try {
      entries = (await readdir(versionDir, { recursive: true })).map(String);
    } catch (e) {
      throw new ImageError(`cannot list kernel modules in ${versionDir}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    return new ModuleIndex(versionDir, entries.filter((f) => MODULE_SUFFIX.test(f)).sort(), builtin);
  }

  /** A module's file contents, decompressed. */
  async contents(m: KernelModule): Promise<Uint8Array> {
    return readDecompressed(join(this.root, this.files.get(m.name)!));
  }

  /**
   * The modules to load for `wanted` (module names or aliases such as
   * fs-ext4), with their dependencies (modinfo "depends") and soft
   * dependencies (modinfo "softdep", loaded alongside by kmod's modprobe and
   * asked for by request_module, e.g. ext4's crypto-crc32c), in load order.
   */
  async resolve(wanted: string[]): Promise<ResolvedModules> {
    const order: KernelModule[] = [];
    const done = new Set<string>();
    const builtin: string[] = [];
    const visiting: string[] = [];
    const soft: string[] = [];

    const visit = async (name: string, neededBy: string): Promise<void> => {
      if (done.has(name)) return;
      if (visiting.includes(name)) throw new ImageError(`${this.root}: module dependency cycle: ${[...visiting.slice(visiting.indexOf(name)), name].join(" -> ")}`);
      visiting.push(name);
      const m = await this.module(name);
      for (const dep of m.info.depends) {
        const d = normalize(dep);
        if (this.files.has(d)) await visit(d, name);
        else if (!this.builtin.has(d)) throw new ImageError(`${this.root}: module ${name} (${neededBy}) depends on ${dep}, which is neither a module file nor built in`);
      }
      soft.push(...m.info.softdeps);
      visiting.pop();
      done.add(name);
      order.push(m);
    };

    for (const w of wanted) {
      const names = await this.lookup(w);
      if (names === "builtin") builtin.push(w);
      else if (names.length === 0) throw new ImageError(`${this.root}: no kernel module ${w} (not a module name, an alias or built in)`);
      else for (const n of names) await visit(n, `wanted as ${w}`);
    }
    // Soft dependencies are optional by definition (kmod skips the missing
    // ones); a softdep on something built in or absent is not an error.
    while (soft.length > 0) {
      const s = soft.shift()!;
      const names = await this.lookup(s);
      if (names !== "builtin") for (const n of names) await visit(n, `soft dependency ${s}`);
    }
    return { modules: order, builtin };
  }

  /** Module names a request resolves to: by name first, then built in, then by alias. */
  private async lookup(request: string): Promise<string[] | "builtin"> {
    const name = normalize(request);
    if (this.files.has(name)) return [name];
    if (this.builtin.has(name)) return "builtin";
    await this.readAll();
    const out: string[] = [];
    for (const [n, info] of this.infos) {
      if (info.aliases.some((a) => aliasMatches(a, request))) out.push(n);
    }
    return out.sort();
  }

  private async module(name: string): Promise<KernelModule> {
    const path = this.files.get(name)!.replace(MODULE_SUFFIX, ".ko");
    const source = join(this.root, this.files.get(name)!);
    const info = this.infos.get(name) ?? this.setInfo(name, source, await readDecompressed(source));
    return { name, path, info };
  }

  /** Reads every module's metadata (an alias search). */
  private async readAll(): Promise<void> {
    if (this.fullyRead) return;
    const byPath = new Map<string, string>();
    for (const [name, file] of this.files) if (!this.infos.has(name)) byPath.set(join(this.root, file), name);
    await readDecompressedMany([...byPath.keys()], (path, bytes) => this.setInfo(byPath.get(path)!, path, bytes));
    this.fullyRead = true;
  }

  private setInfo(name: string, source: string, bytes: Uint8Array): ModInfo {
    const info = readModinfo(bytes, source);
    if (info.name !== undefined && info.name !== name) throw new ImageError(`${source}: module calls itself ${info.name}, its file name says ${name}`);
    this.infos.set(name, info);
    return info;
  }
}

/** modules.dep for these modules (in load order, as resolve() returns them). */
export function modulesDep(modules: KernelModule[]): string {
  const byName = new Map(modules.map((m) => [m.name, m]));
  const position = new Map(modules.map((m, i) => [m.name, i]));
  const closure = (m: KernelModule, into: Set<string>): Set<string> => {
    for (const d of m.info.depends.map(normalize)) {
      const dep = byName.get(d);
      if (dep && !into.has(d)) closure(dep, into.add(d));
    }
    return into;
  };
  return modules.map((m) => {
    // Latest-loaded first, so reading the list backwards loads dependencies first.
    const deps = [...closure(m, new Set())].sort((a, b) => position.get(b)! - position.get(a)!);
    return `${m.path}:${deps.map((d) => ` ${byName.get(d)!.path}`).join("")}\n`;
  }).join("");
}

/** modules.alias for these modules. */
export function modulesAlias(modules: KernelModule[]): string {
  const lines = modules.flatMap((m) => m.info.aliases.map((a) => `alias ${a} ${m.name}\n`));
  return `# Aliases extracted from modules themselves.\n${lines.join("")}`;
}

/** modules.order keeping only these modules (kbuild's order, then any others). */
export function filterModulesOrder(modulesOrder: string, modules: KernelModule[]): string {
  const wanted = new Set(modules.map((m) => m.path));
  const listed = modulesOrder.split("\n").map((l) => l.trim().replace(MODULE_SUFFIX, ".ko")).filter((l) => wanted.has(l));
  const rest = modules.map((m) => m.path).filter((p) => !listed.includes(p));
  return [...listed, ...rest].map((p) => `${p}\n`).join("");
}

/** Module names and aliases compare with "-" and "_" equal (kmod's alias_normalize). */
function normalize(s: string): string {
  return s.replace(/-/g, "_");
}

/**
 * fnmatch(3) without flags, as modprobe matches an alias pattern against a
 * request; "-" and "_" are the same outside [...] classes.
 */
export function aliasMatches(pattern: string, request: string): boolean {
  let re = "^";
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    const close = c === "[" ? pattern.indexOf("]", i + 2) : -1;
    if (c === "*") re += ".*";
    else if (c === "?") re += ".";
    else if (close > 0) {
      const body = pattern.slice(i + 1, close).replace(/^!/, "^").replace(/\\/g, "\\\\");
      re += `[${body}]`;
      i = close;
    } else if (c === "-" || c === "_") re += "[-_]";
    else re += c.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  }
  return new RegExp(`${re}$`, "s").test(request);
}
