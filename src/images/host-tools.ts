// The host programs the image pull relies on (apt-get, apt-cache, dpkg-deb,
// xz), run without a shell. A missing program becomes one line naming the
// Debian package that provides it; a failing one, its first error line.

import { spawn } from "node:child_process";
import { readFile } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { gunzip } from "node:zlib";
import { promisify } from "node:util";
import { ImageError } from "./errors.js";

/** command -> Debian package that installs it */
const PACKAGES: Record<string, string> = {
  "apt-get": "apt",
  "apt-cache": "apt",
  "dpkg-deb": "dpkg",
  xz: "xz-utils",
  zstd: "zstd",
  mke2fs: "e2fsprogs",
};

export interface RunOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** "capture" (default) keeps stdout; "stderr" shows it on our stderr (apt's progress). */
  stdout?: "capture" | "stderr";
}

export interface RunResult {
  status: number;
  stdout: Buffer;
  stderr: string;
}

/** Runs a program to completion; rejects only if it cannot be started. */
export function runTool(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      stdio: ["ignore", opts.stdout === "stderr" ? process.stderr : "pipe", "pipe"],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout?.on("data", (b: Buffer) => out.push(b));
    child.stderr?.on("data", (b: Buffer) => err.push(b));
    child.on("error", (e: NodeJS.ErrnoException) => {
      if (e.code === "ENOENT") reject(new ImageError(`${cmd} not found: install the Debian package ${PACKAGES[cmd] ?? cmd}`));
      else reject(new ImageError(`cannot run ${cmd}: ${e.message}`));
    });
    child.on("close", (code, signal) => {
      resolve({ status: code ?? (signal ? 128 : 1), stdout: Buffer.concat(out), stderr: Buffer.concat(err).toString("utf8") });
    });
  });
}

/** Runs a program and returns its stdout; a non-zero exit is an ImageError saying `what` failed. */
export async function runOrFail(what: string, cmd: string, args: string[], opts: RunOptions = {}): Promise<Buffer> {
  const r = await runTool(cmd, args, opts);
  if (r.status !== 0) throw new ImageError(`${what} failed: ${firstErrorLine(r.stderr) ?? `${cmd} exited with status ${r.status}`}`);
  return r.stdout;
}

/**
 * The line that says what went wrong in a tool's stderr: apt prefixes errors
 * with "E: " (warnings "W: "), xz and dpkg-deb with their own name.
 */
export function firstErrorLine(stderr: string): string | undefined {
  const lines = stderr.split("\n").map((l) => l.trim()).filter((l) => l !== "");
  const error = lines.find((l) => l.startsWith("E: ")) ?? lines.find((l) => l.startsWith("W: ")) ?? lines[0];
  return error?.replace(/^[EW]: /, "");
}

const gunzipAsync = promisify(gunzip);

/**
 * A file's contents, decompressed by its suffix: kernel packages ship modules
 * as .ko.xz (Debian), .ko.zst or .ko.gz (other distributions).
 */
export async function readDecompressed(path: string): Promise<Uint8Array> {
  if (path.endsWith(".xz")) return runOrFail(`xz -dc ${path}`, "xz", ["-dc", "--", path]);
  if (path.endsWith(".zst")) return runOrFail(`zstd -dc ${path}`, "zstd", ["-dcq", "--", path]);
  if (path.endsWith(".gz")) {
    try {
      return await gunzipAsync(await readFile(path));
    } catch (e) {
      throw new ImageError(`${path}: not a valid gzip file (${(e as Error).message})`);
    }
  }
  try {
    return await readFile(path);
  } catch (e) {
    throw new ImageError(`cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

/**
 * Decompresses many files, calling `each` with every file's contents (in no
 * particular order). .xz files go through a few long-running `xz -dc`
 * processes instead of one per file: the sizes from `xz --robot --list`
 * (read from each file's index, xz(1) "Robot mode") split the concatenated
 * output. A kernel has thousands of modules and starting a process from Node
 * costs more than decompressing a small one.
 */
export async function readDecompressedMany(paths: string[], each: (path: string, bytes: Uint8Array) => void): Promise<void> {
  const xzFiles = paths.filter((p) => p.endsWith(".xz"));
  for (const p of paths.filter((p) => !p.endsWith(".xz"))) each(p, await readDecompressed(p));
  if (xzFiles.length === 0) return;
  const batches: string[][] = [];
  const perBatch = Math.min(64, Math.ceil(xzFiles.length / Math.max(1, availableParallelism())));
  for (let i = 0; i < xzFiles.length; i += perBatch) batches.push(xzFiles.slice(i, i + perBatch));
  const pending = [...batches];
  const worker = async () => {
    for (let b = pending.shift(); b !== undefined; b = pending.shift()) await decompressXzBatch(b, each);
  };
  await Promise.all(Array.from({ length: Math.min(batches.length, availableParallelism()) }, worker));
}

async function decompressXzBatch(paths: string[], each: (path: string, bytes: Uint8Array) => void): Promise<void> {
  const listing = (await runOrFail("xz --robot --list", "xz", ["--robot", "--list", "--", ...paths])).toString("utf8");
  // "name\t<path>" then "file\t<streams>\t<blocks>\t<compressed>\t<uncompressed>\t...", per file.
  const sizes = listing.split("\n").filter((l) => l.startsWith("file\t")).map((l) => Number(l.split("\t")[4]));
  if (sizes.length !== paths.length || sizes.some((n) => !Number.isSafeInteger(n))) throw new ImageError(`xz --robot --list gave ${sizes.length} sizes for ${paths.length} files`);
  const out = await runOrFail("xz -dc", "xz", ["-dc", "--", ...paths]);
  let at = 0;
  paths.forEach((p, i) => {
    each(p, out.subarray(at, at + sizes[i]));
    at += sizes[i];
  });
  if (at !== out.length) throw new ImageError(`xz -dc of ${paths.length} files gave ${out.length} bytes, their indexes say ${at}`);
}
