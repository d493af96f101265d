// `tsvisor disk create|info|check`: disk image tools (src/backends/disk).
//
// Exit status: 0 success; 1 an error (one `tsvisor: ...` line on stderr);
// 2 bad usage (thrown as UsageError for main.ts). `check` exits as qemu-img
// check does: 0 clean, 2 corruption found, 3 only leaked clusters, 1 when the
// check could not be completed.

import { parseArgs } from "node:util";
import { statSync } from "node:fs";
import { basename, dirname, isAbsolute, resolve } from "node:path";
import { openDisk, parseSize, probeFormat, DiskImageError, Qcow2Image, type DiskImage } from "../backends/disk/disk.js";
import { createQcow2 } from "../backends/disk/qcow2/create.js";
import { checkQcow2, formatCheck } from "../backends/disk/qcow2/check.js";
import { UsageError } from "./size.js";

export const DISK_HELP = `  disk create [--size SIZE] [--backing BASE] [--cluster-size N] FILE.qcow2
                          new qcow2 v3 image (the size defaults to BASE's)
  disk info FILE          format, sizes, cluster size, backing chain
  disk check FILE         check a qcow2 image (status 2: corrupt, 3: leaked clusters)
`;

const CHECK_CORRUPT = 2;
const CHECK_LEAKS = 3;

function parse<O extends Record<string, { type: "string" }>>(argv: string[], options: O, sub: string) {
  try {
    return parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  } catch (e) {
    throw new UsageError(`disk ${sub}: ${(e as Error).message.split(/\.\s/)[0]}`);
  }
}

function oneFile(positionals: string[], sub: string): string {
  if (positionals.length !== 1) throw new UsageError(`disk ${sub}: expected one FILE, got ${positionals.length}`);
  return positionals[0];
}

/** Runs `tsvisor disk ...`; returns the exit status. */
export function diskCommand(argv: string[], out: (s: string) => void = (s) => process.stdout.write(s)): number {
  const [sub, ...rest] = argv;
  try {
    switch (sub) {
      case "create": return create(rest, out);
      case "info": return info(rest, out);
      case "check": return check(rest, out);
      case undefined: throw new UsageError("disk: expected a subcommand: create, info or check");
      default: throw new UsageError(`disk: unknown subcommand '${sub}' (create, info or check)`);
    }
  } catch (e) {
    if (e instanceof DiskImageError) {
      process.stderr.write(`tsvisor: ${e.message}\n`);
      return 1;
    }
    throw e;
  }
}

function sizeOption(flag: string, text: string): number {
  try {
    return parseSize(text);
  } catch (e) {
    throw new UsageError(`disk create: ${flag}: ${(e as Error).message}`);
  }
}

function create(argv: string[], out: (s: string) => void): number {
  const { values: v, positionals } = parse(argv, { size: { type: "string" }, backing: { type: "string" }, "cluster-size": { type: "string" } }, "create");
  const file = oneFile(positionals, "create");
  let size = v.size !== undefined ? sizeOption("--size", v.size) : undefined;
  const clusterSize = v["cluster-size"] !== undefined ? sizeOption("--cluster-size", v["cluster-size"]) : undefined;
  let backingFormat: "raw" | "qcow2" | undefined;
  if (v.backing !== undefined) {
    // Stored as given; like every reader, resolve a relative name from the new image's directory.
    const at = isAbsolute(v.backing) ? v.backing : resolve(dirname(file), v.backing);
    let base: DiskImage;
    try {
      backingFormat = probeFormat(at);
      base = openDisk(at, { format: backingFormat, readOnly: true });
    } catch (e) {
      if (e instanceof DiskImageError && !isAbsolute(v.backing) && at !== resolve(v.backing)) {
        throw new DiskImageError(`${e.message} (a relative backing file is found from the new image's directory)`);
      }
      throw e;
    }
    if (size === undefined) size = Math.ceil(base.virtualSize / 512) * 512;
    base.close();
  }
  if (size === undefined) throw new UsageError("disk create: --size is required without --backing");
  createQcow2(file, { size, clusterSize, backingFile: v.backing, backingFormat });
  out(`Formatting '${file}', fmt=qcow2 size=${size}${v.backing !== undefined ? ` backing_file=${v.backing} backing_fmt=${backingFormat}` : ""}\n`);
  return 0;
}

/** "516 KiB", "64 MiB", "1.5 GiB" */
export function humanSize(n: number): string {
  const units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
  let u = 0;
  let x = n;
  while (x >= 1024 && u < units.length - 1) {
    x /= 1024;
    u++;
  }
  return u === 0 ? `${n} bytes` : `${Number(x.toFixed(2))} ${units[u]}`;
}

function info(argv: string[], out: (s: string) => void): number {
  const { positionals } = parse(argv, {}, "info");
  const file = oneFile(positionals, "info");
  const disk = openDisk(file, { readOnly: true });
  try {
    const lines: string[] = [];
    const describe = (d: DiskImage, path: string, indent: string) => {
      lines.push(`${indent}image: ${path}`);
      lines.push(`${indent}file format: ${d.format}`);
      lines.push(`${indent}virtual size: ${humanSize(d.virtualSize)} (${d.virtualSize} bytes)`);
      const st = statSync(path);
      lines.push(`${indent}disk size: ${humanSize(st.blocks * 512)}`);
      if (d instanceof Qcow2Image) {
        const h = d.header;
        const allocated = d.allocatedBytes();
        lines.push(`${indent}allocated in this image: ${humanSize(allocated)} (${allocated} bytes)`);
        lines.push(`${indent}cluster size: ${d.clusterSize}`);
        lines.push(`${indent}version: ${h.version} (compat ${h.version === 3 ? "1.1" : "0.10"}), refcount bits: ${d.refcountBits}`);
        if (h.backingFile !== undefined) {
          lines.push(`${indent}backing file: ${h.backingFile}${d.backingPath !== h.backingFile ? ` (actual path: ${d.backingPath})` : ""}`);
          lines.push(`${indent}backing file format: ${h.backingFormat ?? `${d.backing?.format} (probed)`}`);
        }
      }
    };
    describe(disk, file, "");
    // The chain below, one image per level.
    let d: DiskImage | undefined = disk;
    const chain: string[] = [];
    while (d instanceof Qcow2Image && d.backing && d.backingPath) {
      chain.push(`${d.backingPath} (${d.backing.format}, ${humanSize(d.backing.virtualSize)})`);
      d = d.backing;
    }
    if (chain.length > 0) {
      lines.push("backing chain:");
      lines.push(`  ${file} (${disk.format}, ${humanSize(disk.virtualSize)})`);
      for (const c of chain) lines.push(`  -> ${c}`);
    }
    out(lines.join("\n") + "\n");
  } finally {
    disk.close();
  }
  return 0;
}

function check(argv: string[], out: (s: string) => void): number {
  const { positionals } = parse(argv, {}, "check");
  const file = oneFile(positionals, "check");
  if (probeFormat(file) === "raw") {
    out(`${basename(file)}: raw image: no metadata to check\n`);
    return 0;
  }
  let r;
  try {
    r = checkQcow2(file);
  } catch (e) {
    if (e instanceof DiskImageError) throw new DiskImageError(`check could not be completed: ${e.message}`);
    throw e;
  }
  out(formatCheck(r));
  return r.corruptions > 0 ? CHECK_CORRUPT : r.leaks > 0 ? CHECK_LEAKS : 0;
}
