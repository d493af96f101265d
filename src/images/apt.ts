// Debian's own client, apt, run with a private configuration so the host's
// apt setup is never read for sources nor written: its own sources.list,
// package lists, cache and an empty dpkg status file, all under `dir`
// (apt.conf(5): Dir::Etc::SourceList, Dir::State::Lists, Dir::Cache,
// Dir::State::Status). The host's apt.conf.d still applies, so proxies work.
//
// Trust: the sources line names Debian's archive keyring (signed-by, see
// sources.list(5)), so `apt-get update` accepts the lists only with a valid
// InRelease signature, and `apt-get download` checks each .deb against the
// SHA256 in those lists. We check size and SHA256 once more ourselves.

import { createHash } from "node:crypto";
import { createReadStream, existsSync } from "node:fs";
import { mkdir, readdir, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { ImageError } from "./errors.js";
import { firstErrorLine, runTool, type RunResult } from "./host-tools.js";

export const DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg";

export interface AptSource {
  mirror: string; // e.g. http://deb.debian.org/debian
  suite: string; // e.g. trixie
  component: string; // e.g. main
  arch: string; // Debian architecture, e.g. riscv64
}

/** The fields of one package's record in the signed Packages index. */
export interface PackageRecord {
  name: string;
  version: string;
  size: number;
  sha256: string;
  /** Package names in Depends (alternatives and version constraints dropped). */
  depends: string[];
}

export class PrivateApt {
  /**
   * @param dir private state directory (created)
   * @param showProgress let apt's progress output through to our stderr
   */
  constructor(
    readonly dir: string,
    readonly source: AptSource,
    readonly showProgress: boolean,
    /** Told about each retry of a transiently failing command. */
    private readonly onRetry: (line: string) => void = () => {},
    /** Pauses before each retry: enough for a CDN node that caught a sync halfway. */
    private readonly retryDelaysMs: readonly number[] = [10_000, 20_000],
  ) {}

  /** Writes sources.list and an empty dpkg status, then fetches the package lists. */
  async update(): Promise<void> {
    if (!existsSync(DEBIAN_KEYRING)) throw new ImageError(`${DEBIAN_KEYRING} is missing: install the Debian package debian-archive-keyring`);
    if (!/^(https?|file):\/\/\S+$/.test(this.source.mirror)) throw new ImageError(`mirror ${JSON.stringify(this.source.mirror)} is not an http(s):// or file:// URL`);
    for (const d of ["lists/partial", "cache/archives/partial", "etc/preferences.d"]) await mkdir(join(this.dir, d), { recursive: true });
    const { mirror, suite, component } = this.source;
    await writeFile(join(this.dir, "etc/sources.list"), `deb [signed-by=${DEBIAN_KEYRING}] ${mirror} ${suite} ${component}\n`);
    await writeFile(join(this.dir, "status"), "");
    // Error-Mode=any: a list that cannot be fetched is an error, not a warning (apt >= 2.1).
    const r = await this.retryTransient("apt-get update", () => runTool("apt-get", [...this.options(), "-o", "APT::Update::Error-Mode=any", "update"], this.runOptions()));
    const lists = (await readdir(join(this.dir, "lists"))).filter((f) => f.endsWith("_Packages") || f.includes("_Packages."));
    if (r.status !== 0 || lists.length === 0) {
      throw new ImageError(`apt-get update failed: ${firstErrorLine(r.stderr) ?? `no package list from ${mirror} ${suite}`}`);
    }
  }

  /** The candidate version's record (apt-cache show). */
  async show(name: string): Promise<PackageRecord> {
    const out = await runTool("apt-cache", [...this.options(), "show", "--no-all-versions", name], this.runOptions(false));
    if (out.status !== 0) throw new ImageError(`apt-cache show ${name} failed: ${firstErrorLine(out.stderr) ?? "no such package"}`);
    return packageRecord(out.stdout.toString("utf8"), name);
  }

  /** Downloads a package's .deb into `destDir` (empty) and checks it; returns its path. */
  async download(pkg: PackageRecord, destDir: string): Promise<string> {
    await mkdir(destDir, { recursive: true });
    const r = await this.retryTransient(`apt-get download ${pkg.name}`, () =>
      runTool("apt-get", [...this.options(), "download", `${pkg.name}=${pkg.version}`], { ...this.runOptions(), cwd: destDir }));
    if (r.status !== 0) throw new ImageError(`apt-get download ${pkg.name} failed: ${firstErrorLine(r.stderr) ?? `apt-get exited with status ${r.status}`}`);
    const debs = (await readdir(destDir)).filter((f) => f.endsWith(".deb"));
    if (debs.length !== 1) throw new ImageError(`apt-get download ${pkg.name} left ${debs.length} .deb files in ${destDir}`);
    const path = join(destDir, debs[0]);
    const size = (await stat(path)).size;
    if (size !== pkg.size) throw new ImageError(`${debs[0]}: ${size} bytes, the signed index says ${pkg.size}`);
    const sha256 = await sha256File(path);
    if (sha256 !== pkg.sha256) throw new ImageError(`${debs[0]}: SHA256 ${sha256}, the signed index says ${pkg.sha256}`);
    return path;
  }

  /** Every package record of the lists (apt-cache dumpavail), as deb822 text. */
  async dumpAvailable(): Promise<string> {
    const out = await runTool("apt-cache", [...this.options(), "dumpavail"], this.runOptions(false));
    if (out.status !== 0) throw new ImageError(`apt-cache dumpavail failed: ${firstErrorLine(out.stderr) ?? `status ${out.status}`}`);
    return out.stdout.toString("utf8");
  }

  /**
   * Downloads `names` and everything they depend on (apt resolves, against
   * the empty dpkg status, as for a new system; no Recommends) into
   * `archivesDir`; apt checks each .deb against the signed lists.
   * Returns the paths of the .debs.
   */
  async downloadWithDependencies(names: string[], archivesDir: string): Promise<string[]> {
    await mkdir(join(archivesDir, "partial"), { recursive: true });
    const args = [
      ...this.options(), "-o", `Dir::Cache::Archives=${archivesDir}`, "-o", "APT::Get::AllowUnauthenticated=false",
      "-y", "--no-install-recommends", "install", "--download-only", ...names,
    ];
    const r = await this.retryTransient("apt-get install --download-only", () => runTool("apt-get", args, this.runOptions()));
    if (r.status !== 0) throw new ImageError(`apt-get install --download-only failed: ${firstErrorLine(r.stderr) ?? `apt-get exited with status ${r.status}`}`);
    const debs = (await readdir(archivesDir)).filter((f) => f.endsWith(".deb")).sort();
    if (debs.length === 0) throw new ImageError(`apt-get install --download-only left no .deb files in ${archivesDir}`);
    return debs.map((f) => join(archivesDir, f));
  }

  /**
   * Runs an apt command again, after a pause, while it fails the way a
   * mirror does in the middle of a sync (an index whose size or hash does
   * not match the signed Release yet) or an overloaded one does (5xx,
   * timeouts). Other failures (no route, refused, no such package) return
   * at once: waiting would not change them.
   */
  private async retryTransient(what: string, run: () => Promise<RunResult>): Promise<RunResult> {
    for (let attempt = 0; ; attempt++) {
      const r = await run();
      const delay = this.retryDelaysMs[attempt];
      if (r.status === 0 || delay === undefined || !isTransientAptFailure(r.stderr)) return r;
      this.onRetry(`${what}: ${firstErrorLine(r.stderr) ?? "failed"}; trying again in ${Math.round(delay / 1000)} s`);
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }

  private options(): string[] {
    const o = (k: string, v: string) => ["-o", `${k}=${v}`];
    const asRoot = process.getuid?.() === 0;
    return [
      ...o("Dir::Etc::SourceList", join(this.dir, "etc/sources.list")),
      ...o("Dir::Etc::SourceParts", "/dev/null"),
      ...o("Dir::Etc::Preferences", join(this.dir, "etc/preferences")),
      ...o("Dir::Etc::PreferencesParts", join(this.dir, "etc/preferences.d")),
      ...o("Dir::State::Lists", join(this.dir, "lists")),
      ...o("Dir::State::Status", join(this.dir, "status")),
      ...o("Dir::Cache", join(this.dir, "cache")),
      ...o("APT::Architecture", this.source.arch),
      ...o("APT::Architectures", this.source.arch),
      ...o("Debug::NoLocking", "1"),
      // As root, apt drops to the _apt user to download, which cannot write
      // into a private directory owned by root; not as a normal user.
      ...(asRoot ? o("APT::Sandbox::User", "root") : []),
    ];
  }

  private runOptions(progress = this.showProgress) {
    // LC_ALL=C: apt's messages (first error line) in one language.
    return { env: { ...process.env, LC_ALL: "C" }, stdout: progress ? ("stderr" as const) : ("capture" as const) };
  }
}

/** apt's messages for a mirror that is syncing or overloaded (apt/apt-pkg/acquire-item.cc wording). */
export function isTransientAptFailure(stderr: string): boolean {
  return isIndexMismatch(stderr) || /\b50[234]\b|Temporary failure resolving|Connection timed out|Could not connect .*timed out/i.test(stderr);
}

/** apt's words for lists that do not match the signed Release (apt-pkg/acquire-item.cc). */
export function isIndexMismatch(message: string): boolean {
  return /Mirror sync in progress|Hash Sum mismatch|File has unexpected size/i.test(message);
}

/** The record apt-cache show printed for `name`, checked. */
export function packageRecord(text: string, name: string): PackageRecord {
  const fields = parseControl(text);
  const missing = ["Package", "Version", "Size", "SHA256"].filter((f) => !fields[f]);
  if (missing.length) throw new ImageError(`apt-cache show ${name}: the record has no ${missing.join(", ")}`);
  if (!/^[0-9a-f]{64}$/.test(fields.SHA256)) throw new ImageError(`apt-cache show ${name}: bad SHA256 ${fields.SHA256}`);
  const size = Number(fields.Size);
  if (!Number.isSafeInteger(size) || size <= 0) throw new ImageError(`apt-cache show ${name}: bad Size ${fields.Size}`);
  return { name: fields.Package, version: fields.Version, size, sha256: fields.SHA256, depends: dependsNames(fields.Depends ?? "") };
}

/** "a (>= 1), b | c, d:any" -> [a, b, d]: the first of each alternative, no version or arch qualifier. */
export function dependsNames(field: string): string[] {
  return field.split(",").map((d) => d.trim().split(/[\s(|:]/)[0]).filter((d) => d !== "");
}

/** The first paragraph of a deb822 control text: "Field: value", continuation lines start with a blank. */
export function parseControl(text: string): Record<string, string> {
  const fields: Record<string, string> = {};
  let last: string | undefined;
  for (const line of text.split("\n")) {
    if (line.trim() === "") {
      if (last !== undefined) break;
      continue;
    }
    if (/^\s/.test(line) && last !== undefined) fields[last] += `\n${line.trim()}`;
    else {
      const colon = line.indexOf(":");
      if (colon <= 0) continue;
      last = line.slice(0, colon);
      fields[last] = line.slice(colon + 1).trim();
    }
  }
  return fields;
}

export async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}
