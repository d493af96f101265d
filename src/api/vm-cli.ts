// `tsvisor vm ...` and `tsvisor host`: the command line over the API.
// Output is for people; --json (ls, info) gives the API's objects.
import { resolveNetSpecs } from "../cli/vm-devices.js";
import { parseArgs } from "node:util";
import { resolve, join } from "node:path";
import { UsageError, parseSize, parseSizeOrZero } from "../cli/size.js";
import { checkImageName } from "../cli/system-image.js";
import { HOST_OVERCOMMIT_OPTIONS, overcommitOptions, parsePoolSize, type OvercommitFlags } from "../cli/memory-flags.js";
import { call, rawRequest, failureOf } from "./client.js";
import { clientSocketPath, defaultSocketPath, defaultStateDir } from "./paths.js";
import { runDaemon } from "./server.js";
import { attachConsole } from "./console-client.js";
import { execInVm } from "./exec-client.js";
import { AgentProtocolError, cwdFrame, envFrame } from "../images/agent-protocol.js";
import { describeEnd, type StatsView, type RunOutcome, type SnapshotView, type MigrationStatus } from "./managed-vm.js";
import { ProgressLine } from "../cli/progress-line.js";
import type { VmView, MigrateView } from "./daemon.js";
import type { HostMemoryStats } from "../memory/manager/memory-manager.js";
import type { SnapshotSharingStats } from "../snapshot/page-share.js";

export const VM_HELP = `  host [--socket PATH] [--pcpus N] [--mem SIZE] [--state-dir DIR] [--listen HOST:PORT]
       [--migration-listen HOST:PORT [--migration-token TOKEN] [--migration-tls]]
       [--swap SIZE] [--compress SIZE] [--no-sharing] [--sharing-rate PAGES/MS] [--no-reclaim]
                          run the host daemon in the foreground (API on a Unix socket;
                          --listen: also on TCP, behind a bearer token;
                          --migration-listen: take live-migrated VMs there from sources
                          that know the token, else $TSVISOR_MIGRATION_TOKEN;
                          --migration-tls: only over TLS, keyed by the token). Memory:
                          --mem the frame pool all VMs share, 16M..4G (default 4G;
                          the VMs' memory may add up to more), --swap a swap file of
                          that size in the state directory (default none), --compress
                          the compressed page pool (0: off; default 1/8 of the pool,
                          at most 256M), --no-sharing no page sharing, --sharing-rate
                          pages looked at per pass and ms between passes (default
                          2048/100), --no-reclaim never take memory back from guests
  host info [--json]      the host: pool, frames, overcommit, compression, swap,
                          sharing and reclaim counters, VMs waiting for memory
  vm create NAME [options of run] [--weight W] [--cap PCT] [--pin CPUS]
            [--share-group NAME] [--no-balloon] [--vsock PATH[,cid=N]|none]
            [--autostart] [--start] [-- CMD ARGS...]     define a VM on the host
                          (--share-group: share identical pages with the group's
                          other VMs; default: within the VM only). --image debian:
                          its root disk is an overlay of its own on the Debian system
                          image, in the state directory, made at its first start,
                          kept across runs and removed by vm rm
  vm start|pause|resume|stop|rm NAME
  vm ls [--json]          the host's VMs: name, state, vCPUs, memory, CPU %, uptime
  vm info NAME [--json]   state, config, CPU seconds per vCPU, exits, memory: pages
                          by state, balloon, the guest's own memory statistics
  vm set NAME [--weight W] [--cap PCT] [--pin CPUS]       scheduling, also while it runs
  vm set NAME --balloon SIZE      ask a running VM's balloon to hold SIZE of its RAM
                          (0 gives it all back)
  vm logs NAME [-f]       the console output the host kept (the last MiB)
  vm console NAME [--read-only]   this terminal on its console (Ctrl-A X detaches)
  vm exec NAME [-t] [-e NAME=VALUE]... [-w DIR] [--] CMD ARGS...
                          run CMD in the running VM through its guest agent
                          (over vsock): our stdin to it, its stdout and stderr to
                          ours; exits with its status (127: not found). -e/--env:
                          add to its environment; -w/--workdir: start it in DIR
                          (absolute; default /root; 126 when there is no such DIR);
                          -t/--tty: on a pseudo-terminal of this terminal's size
                          and TERM (vm exec -t NAME sh: an interactive shell, until
                          exit or ^D; -i is accepted and changes nothing: stdin is
                          always attached)
  vm wait NAME            wait until it stops; exit with its command's status
  vm snapshot NAME FILE [--diff|--live] [--stay-paused] [--disks overlay]
                          write the running (or paused) VM's state, RAM and definition
                          to FILE; it runs on unless --stay-paused. --live: its RAM is
                          written while it runs, the pause only for the last pages
                          it wrote and its state. --diff: only the
                          pages written since its last snapshot (the parent, which
                          must stay where it is). Disk images are not copied: with
                          --disks overlay each writable image D is frozen as the
                          snapshot needs it and the VM goes on with a new qcow2
                          overlay D.ID.qcow2 backed by D (its definition names it)
  vm restore FILE [--name NAME] [--paused] [--keep-macs]
                          define a VM from a snapshot (its own definition, under NAME
                          if given) and bring it back running, or paused until resume;
                          its disks are opened from that definition, so they must be
                          as they were when it was taken. A restored VM that reboots
                          boots its kernel cold (without one of its own: it stops).
                          Under a NAME of its own it is a clone: its network cards get
                          new MAC addresses, which its guest takes through its agent
                          (--keep-macs: the snapshot's)
  vm migrate NAME --to HOST:PORT [--token TOKEN] [--postcopy|--postcopy-auto]
             [--max-downtime MS] [--max-bandwidth MIB] [--copy-disks] [--tls]
                          live-migrate the running VM to the host whose --migration-listen
                          is HOST:PORT (token: --token, else $TSVISOR_MIGRATION_TOKEN);
                          --max-downtime: the final pause's limit (default 300 ms);
                          --max-bandwidth: send at most MIB MiB/s (default: no limit);
                          its disks must be at the same paths there, unless --copy-disks:
                          their content goes along, into new qcow2 images in the target's
                          state directory (what the guest writes meanwhile too).
                          --tls: encrypted, for a target host with --migration-tls. Once
                          it runs there it is stopped and removed here. Each round's
                          progress is shown on stderr (and is in this host's log)
                          (every vm command: --host PATH or http://HOST:PORT, else
                          $TSVISOR_HOST; the token of a TCP host from $TSVISOR_TOKEN)
`;

type Opts = Record<string, { type: "string" | "boolean"; multiple?: boolean; short?: string }>;
type Values = Record<string, string | boolean | string[] | undefined>;

function parse(argv: string[], options: Opts, what: string): { values: Values; positionals: string[] } {
  try {
    const r = parseArgs({ args: argv, options: { host: { type: "string" }, ...options }, allowPositionals: true, strict: true });
    return { values: r.values as Values, positionals: r.positionals };
  } catch (e) {
    throw new UsageError(`${what}: ${(e as Error).message.split(/\.\s/)[0]}`);
  }
}

function intFlag(flag: string, text: string, min: number, max: number): number {
  if (!/^\d+$/.test(text.trim()) || Number(text) < min || Number(text) > max) throw new UsageError(`${flag}: expected ${min}..${max}, got '${text}'`);
  return Number(text);
}

/** "0,2-3" -> [0, 2, 3] */
export function parsePin(text: string): number[] {
  const out: number[] = [];
  for (const part of text.split(",")) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part.trim());
    if (!m || (m[2] !== undefined && Number(m[2]) < Number(m[1]))) throw new UsageError(`--pin: expected pCPU numbers such as 0,2-3, got '${text}'`);
    for (let p = Number(m[1]); p <= Number(m[2] ?? m[1]); p++) out.push(p);
  }
  return out;
}

function checkGroupFlag(text: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(text)) throw new UsageError(`--share-group: 1 to 63 letters, digits, '.', '_' or '-', not starting with a symbol, got '${text}'`);
  return text;
}

function oneName(positionals: string[], what: string): string {
  if (positionals.length !== 1) throw new UsageError(`${what}: expected one VM name${positionals.length > 1 ? `, got '${positionals.join(" ")}'` : ""}`);
  return positionals[0];
}

const vmPath = (name: string, rest = "") => `/v1/vms/${encodeURIComponent(name)}${rest}`;

export async function hostCommand(argv: string[]): Promise<number> {
  if (argv[0] === "info") return hostInfo(argv.slice(1));
  const { values: v, positionals } = parse(argv, {
    socket: { type: "string" }, pcpus: { type: "string" }, mem: { type: "string" }, "state-dir": { type: "string" }, listen: { type: "string" },
    "migration-listen": { type: "string" }, "migration-token": { type: "string" }, "migration-tls": { type: "boolean" },
    ...HOST_OVERCOMMIT_OPTIONS,
  }, "host");
  if (positionals.length > 0) throw new UsageError(`host: unexpected argument '${positionals[0]}'`);
  if (v.host !== undefined) throw new UsageError("host: --socket sets the daemon's socket (--host is for clients)");
  const stateDir = resolve((v["state-dir"] as string | undefined) ?? defaultStateDir());
  let migrationListen: { host: string; port: number; token: string; tls: boolean } | undefined;
  if (v["migration-listen"] !== undefined) {
    const token = (v["migration-token"] as string | undefined) ?? process.env.TSVISOR_MIGRATION_TOKEN;
    if (!token) throw new UsageError("host: --migration-listen needs a token: --migration-token TOKEN or $TSVISOR_MIGRATION_TOKEN");
    if (token.length < 8) throw new UsageError("host: the migration token must be at least 8 characters");
    migrationListen = { ...parseListen(v["migration-listen"] as string, "--migration-listen"), token, tls: v["migration-tls"] === true };
  } else if (v["migration-token"] !== undefined || v["migration-tls"]) {
    throw new UsageError(`host: ${v["migration-tls"] ? "--migration-tls" : "--migration-token"} goes with --migration-listen HOST:PORT`);
  }
  return runDaemon({
    migrationListen,
    socket: resolve((v.socket as string | undefined) ?? defaultSocketPath()),
    stateDir,
    pcpus: v.pcpus !== undefined ? intFlag("--pcpus", v.pcpus as string, 1, 64) : undefined,
    memLimitBytes: v.mem !== undefined ? parsePoolSize("--mem", v.mem as string) : undefined,
    overcommit: overcommitOptions(v as OvercommitFlags, () => join(stateDir, "swap")),
    listen: v.listen !== undefined ? parseListen(v.listen as string) : undefined,
  });
}

/** "127.0.0.1:8080", "[::1]:8080" */
function parseListen(text: string, flag = "--listen"): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(text);
  if (!m || Number(m[3]) > 65535) throw new UsageError(`${flag}: expected HOST:PORT, e.g. 127.0.0.1:8080, got '${text}'`);
  return { host: m[1] ?? m[2], port: Number(m[3]) };
}

export async function vmCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  switch (sub) {
    case "create": return create(rest);
    case "start": case "pause": case "resume": case "stop": return action(sub, rest);
    case "rm": return remove(rest);
    case "ls": return list(rest);
    case "info": return info(rest);
    case "set": return set(rest);
    case "logs": return logs(rest);
    case "wait": return wait(rest);
    case "console": return consoleCmd(rest);
    case "exec": return execCmd(rest);
    case "snapshot": return snapshot(rest);
    case "restore": return restore(rest);
    case "migrate": return migrate(rest);
    case undefined: throw new UsageError("vm: expected a subcommand: create, start, pause, resume, stop, rm, ls, info, set, logs, console, exec, wait, snapshot, restore, migrate");
    default: throw new UsageError(`vm: unknown subcommand '${sub}' (create, start, pause, resume, stop, rm, ls, info, set, logs, console, exec, wait, snapshot, restore, migrate)`);
  }
}

async function create(argv: string[]): Promise<number> {
  const dashes = argv.indexOf("--");
  const own = dashes < 0 ? argv : argv.slice(0, dashes);
  const command = dashes < 0 ? undefined : argv.slice(dashes + 1);
  const { values: v, positionals } = parse(own, {
    kernel: { type: "string" }, initrd: { type: "string" }, image: { type: "string" }, append: { type: "string" },
    cpus: { type: "string" }, mem: { type: "string" }, disk: { type: "string", multiple: true }, net: { type: "string", multiple: true },
    share: { type: "string", multiple: true },
    publish: { type: "string", short: "p", multiple: true },
    console: { type: "string" }, weight: { type: "string" }, cap: { type: "string" }, pin: { type: "string" },
    autostart: { type: "boolean" }, start: { type: "boolean" },
    "share-group": { type: "string" }, "no-balloon": { type: "boolean" }, vsock: { type: "string" },
  }, "vm create");
  const name = oneName(positionals, "vm create");
  if (command !== undefined && command.length === 0) throw new UsageError("vm create: no command after --");
  const body: Record<string, unknown> = { name };
  if (v.kernel !== undefined) body.kernel = resolve(v.kernel as string);
  if (v.initrd !== undefined) body.initrd = resolve(v.initrd as string);
  if (v.image !== undefined) body.image = checkImageName(v.image as string, "vm create --image");
  if (v.append !== undefined) body.append = v.append;
  if (v.cpus !== undefined) body.cpus = intFlag("--cpus", v.cpus as string, 1, 8);
  if (v.mem !== undefined) body.memBytes = parseSize("--mem", v.mem as string);
  if (v.disk !== undefined) body.disks = (v.disk as string[]).map((d) => { const [p, ...o] = d.split(","); return [p ? resolve(p) : p, ...o].join(","); });
  // HOSTDIR made absolute here, as disk paths: the daemon's working directory is not the user's.
  if (v.share !== undefined) body.shares = (v.share as string[]).map((s) => { const i = s.lastIndexOf(":"); return i > 0 ? `${resolve(s.slice(0, i))}${s.slice(i)}` : s; });
  // As `tsvisor run`: the user-mode network unless --net says otherwise.
  body.nets = resolveNetSpecs(v.net as string[] | undefined, v.publish as string[] | undefined);
  if (v.console !== undefined) body.console = v.console;
  if (v.weight !== undefined) body.weight = intFlag("--weight", v.weight as string, 1, 65535);
  if (v.cap !== undefined) body.capPct = intFlag("--cap", v.cap as string, 0, 6400);
  if (v.pin !== undefined) body.affinity = parsePin(v.pin as string);
  if (v.autostart) body.autostart = true;
  if (v["share-group"] !== undefined) body.shareGroup = checkGroupFlag(v["share-group"] as string);
  if (v["no-balloon"]) body.balloon = false;
  if (v.vsock !== undefined) body.vsock = v.vsock === "none" ? "none" : (() => { const [p, ...o] = (v.vsock as string).split(","); return [p ? resolve(p) : p, ...o].join(","); })();
  if (command !== undefined) body.command = command;
  const socket = clientSocketPath(v.host as string | undefined);
  await call(socket, "POST", "/v1/vms", body);
  if (v.start) await call(socket, "POST", vmPath(name, "/start"));
  return 0;
}

async function action(sub: string, argv: string[]): Promise<number> {
  const { values: v, positionals } = parse(argv, {}, `vm ${sub}`);
  await call(clientSocketPath(v.host as string | undefined), "POST", vmPath(oneName(positionals, `vm ${sub}`), `/${sub}`));
  return 0;
}

async function remove(argv: string[]): Promise<number> {
  const { values: v, positionals } = parse(argv, {}, "vm rm");
  await call(clientSocketPath(v.host as string | undefined), "DELETE", vmPath(oneName(positionals, "vm rm")));
  return 0;
}

function duration(seconds: number): string {
  if (seconds <= 0) return "-";
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

const mib = (bytes: number) => `${Math.round(bytes / (1 << 20))}M`;

async function list(argv: string[]): Promise<number> {
  const { values: v, positionals } = parse(argv, { json: { type: "boolean" } }, "vm ls");
  if (positionals.length > 0) throw new UsageError(`vm ls: unexpected argument '${positionals[0]}'`);
  const { vms } = (await call(clientSocketPath(v.host as string | undefined), "GET", "/v1/vms")) as { vms: VmView[] };
  if (v.json) {
    process.stdout.write(JSON.stringify(vms, null, 2) + "\n");
    return 0;
  }
  const rows = [["NAME", "STATE", "VCPUS", "MEMORY", "CPU %", "UPTIME"]];
  for (const vm of vms) rows.push([vm.name, vm.state, String(vm.cpus), mib(vm.memBytes), vm.cpuPercent.toFixed(1), duration(vm.uptimeSeconds)]);
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  for (const r of rows) process.stdout.write(r.map((c, i) => (i >= 2 ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join("  ").trimEnd() + "\n");
  return 0;
}

async function info(argv: string[]): Promise<number> {
  const { values: v, positionals } = parse(argv, { json: { type: "boolean" } }, "vm info");
  const name = oneName(positionals, "vm info");
  const socket = clientSocketPath(v.host as string | undefined);
  const view = (await call(socket, "GET", vmPath(name))) as VmView;
  const stats = (await call(socket, "GET", vmPath(name, "/stats"))) as StatsView;
  if (v.json) {
    process.stdout.write(JSON.stringify({ ...view, stats }, null, 2) + "\n");
    return 0;
  }
  const c = view.config;
  const lines = [
    `name:       ${view.name}`,
    `state:      ${view.state}${view.lastRun && view.state === "stopped" ? ` (${describeEnd(view.lastRun.end as RunOutcome["end"])})` : ""}`,
    `vCPUs:      ${c.cpus}`,
    `memory:     ${mib(c.memBytes)} (resident ${mib(stats.residentBytes)})`,
    `uptime:     ${duration(stats.uptimeSeconds)}, CPU ${stats.cpuPercent.toFixed(1)} %`,
    `kernel:     ${c.kernel ?? "Debian's (pulled)"}${c.initrd ? `, initrd ${c.initrd}` : ""}`,
    ...(c.append !== undefined ? [`append:     ${c.append}`] : []),
    ...(c.command ? [`command:    ${c.command.join(" ")}`] : []),
    ...c.disks.map((d, i) => `disk ${i}:     ${d}`),
    ...c.nets.map((n, i) => `net ${i}:      ${n}`),
    ...(c.shares ?? []).map((s, i) => `share ${i}:    ${s}`),
    ...(view.vsock ? [`vsock:      ${view.vsock.path} (guest CID ${view.vsock.cid}; vm exec goes through it)`] : []),
    `scheduling: weight ${c.weight}, cap ${c.capPct ? `${c.capPct} %` : "none"}, pCPUs ${c.affinity.length ? c.affinity.join(",") : "all"}${c.autostart ? ", autostart" : ""}`,
  ];
  for (const cpu of stats.vcpus) {
    lines.push(`vCPU ${cpu.index}:     ${cpu.state}, ran ${cpu.runSeconds.toFixed(3)} s, waited ${cpu.waitSeconds.toFixed(3)} s runnable, ${cpu.instructions} instructions`);
  }
  const exits = Object.entries(stats.exits).sort((a, b) => b[1] - a[1]);
  if (exits.length) lines.push(`exits:      ${exits.map(([r, n]) => `${r} ${n}`).join(", ")}`);
  for (const n of stats.nets ?? []) {
    lines.push(`${n.name}:       ${n.backend}: to guest ${n.rxFrames} frames ${n.rxBytes} B, from guest ${n.txFrames} frames ${n.txBytes} B`);
    if (n.port) {
      const drops = Object.entries(n.port.drops).filter(([, k]) => k > 0).map(([r, k]) => `${r} ${k}`);
      lines.push(`  port ${n.port.name}${n.port.allowedIp ? ` (${n.port.allowedIp} only)` : ""}: in ${n.port.inFrames} frames, out ${n.port.outFrames} frames` +
        `, dropped ${drops.length ? drops.join(", ") : "none"}`);
    }
    if (n.nat) lines.push(`  NAT: ${n.nat.framesIn} frames in, ${n.nat.framesOut} out, UDP flows ${n.nat.udpFlows}, leases ${n.nat.dhcpLeases.join(" ") || "none"}`);
  }
  lines.push(...memoryLines(stats, c.balloon !== false));
  process.stdout.write(lines.join("\n") + "\n");
  return 0;
}

const PAGE = 4096;
/** Pages as MiB with one decimal. */
const pagesMib = (pages: number) => `${((pages * PAGE) / (1 << 20)).toFixed(1)}M`;
const bytesMib = (bytes: number) => `${(bytes / (1 << 20)).toFixed(1)}M`;
const SHOWN_STATES = ["private", "shared", "zero", "ballooned", "reported", "compressed", "swapped", "untouched"] as const;

/** `vm info`'s memory: pages by state, faults the memory manager served, the balloon, the guest's statistics. */
export function memoryLines(stats: StatsView, hasBalloon: boolean): string[] {
  const lines: string[] = [];
  if (stats.pausedFor) lines.push(`paused:     by the host, waiting for memory: ${stats.pausedFor}`);
  const m = stats.memory;
  if (m) {
    const states: string[] = SHOWN_STATES.map((st) => `${st} ${pagesMib(m.pages[st])}`);
    if (m.pages.busy > 0) states.push(`busy ${pagesMib(m.pages.busy)}`);
    lines.push(`pages:      ${states.join(", ")}`);
    lines.push(`  copy-on-write breaks ${m.cowBreaks}; brought back: decompressions ${m.decompressions}, swap-ins ${m.swapIns}; store reads ${m.storeReads}`);
  }
  const b = stats.balloon;
  if (b) {
    const refused = Object.entries(b.refused).filter(([, n]) => n > 0).map(([r, n]) => `${r} ${n}`);
    lines.push(`balloon:    target ${pagesMib(b.targetPages)}, actual ${pagesMib(b.actualPages)}, held ${pagesMib(b.balloonedPages)}; ` +
      `pages inflated ${b.inflatedTotal}, deflated ${b.deflatedTotal}, reported ${b.reportedTotal}; refused ${refused.length ? refused.join(", ") : "none"}` +
      `${b.discardErrors ? `, discard errors ${b.discardErrors}` : ""}`);
    const g = b.guest;
    if (g.updatedAt === undefined) {
      lines.push("guest:      no memory statistics from the guest's balloon driver yet");
    } else {
      const mem = ([["free", g.freeBytes], ["available", g.availableBytes], ["total", g.totalBytes], ["caches", g.cachesBytes]] as const)
        .filter(([, n]) => n !== undefined).map(([k, n]) => `${k} ${bytesMib(n!)}`);
      const swap = g.swapIn !== undefined || g.swapOut !== undefined ? `; swap in ${bytesMib(g.swapIn ?? 0)}, out ${bytesMib(g.swapOut ?? 0)}` : "";
      const faults = g.majorFaults !== undefined || g.minorFaults !== undefined ? `; faults major ${g.majorFaults ?? 0}, minor ${g.minorFaults ?? 0}` : "";
      const age = g.ageSeconds !== undefined ? ` (${g.ageSeconds.toFixed(1)} s ago)` : "";
      lines.push(`guest:      ${mem.join(", ") || "no figures"}${swap}${faults}${age}`);
    }
  } else if (stats.memory) {
    lines.push(`balloon:    ${hasBalloon ? "not set up" : "none (created with --no-balloon)"}`);
  }
  return lines;
}

async function hostInfo(argv: string[]): Promise<number> {
  const { values: v, positionals } = parse(argv, { json: { type: "boolean" } }, "host info");
  if (positionals.length > 0) throw new UsageError(`host info: unexpected argument '${positionals[0]}'`);
  const h = (await call(clientSocketPath(v.host as string | undefined), "GET", "/v1/host")) as HostView;
  if (v.json) {
    process.stdout.write(JSON.stringify(h, null, 2) + "\n");
    return 0;
  }
  process.stdout.write(hostLines(h).join("\n") + "\n");
  return 0;
}

export interface HostView {
  version: string;
  pcpus: number;
  vms: number;
  pool: { limitBytes: number; committedBytes: number; usedBytes: number };
  memory: HostMemoryStats;
  snapshotSharing: SnapshotSharingStats;
}

export function hostLines(h: HostView): string[] {
  const m = h.memory;
  const f = m.frames;
  const lines = [
    `version:    ${h.version}`,
    `pCPUs:      ${h.pcpus}`,
    `VMs:        ${h.vms}${m.waiting.length ? `, waiting for memory: ${m.waiting.join(", ")}` : ""}`,
    `pool:       ${mib(m.poolBytes)}: free ${pagesMib(f.free)}, in use ${pagesMib(f.inUse)}, shared ${pagesMib(f.shared)} (${f.free}, ${f.inUse}, ${f.shared} frames)`,
    `overcommit: ${m.overcommit.toFixed(2)} (guest RAM ${mib(m.guestRamBytes)} over the pool)`,
    `compressed: ${m.compressed ? `${bytesMib(m.compressed.usedBytes)} used of ${mib(m.compressed.capacityBytes)}, ${m.compressed.pages} pages (${bytesMib(m.compressed.storedBytes)} stored)` : "off"}`,
    `swap:       ${m.swap ? `${bytesMib(m.swap.usedBytes)} used of ${mib(m.swap.capacityBytes)} (${m.swap.path})` : "none"}`,
  ];
  const s = m.sharing;
  lines.push(`sharing:    ${s ? `on: ${s.sharedFrames} shared frames mapped by ${s.sharingPages} guest pages; merged ${s.merged}, zero pages dropped ${s.zeroPagesDropped}, ${s.fullScans} full scans, ${s.pagesScanned} pages scanned` : "off"}`);
  const r = m.reclaim;
  lines.push(`reclaim:    ${r.enabled ? "on" : "off"}, watermarks low ${bytesMib(r.lowWaterBytes)} high ${bytesMib(r.highWaterBytes)}; pages zero ${r.zero}, compressed ${r.compressed}, swapped ${r.swapped}, moved to swap ${r.movedToSwap}; ${r.sweeps} sweeps` +
    `${r.lastError ? `; last error: ${r.lastError}` : ""}`);
  lines.push(`balloons:   pages inflated ${m.balloon.inflated}, reported ${m.balloon.reported}, skipped ${m.balloon.skipped}`);
  const c = h.snapshotSharing;
  lines.push(`clones:     ${c.tables} snapshot${c.tables === 1 ? "" : "s"} with restored VMs, ${pagesMib(c.frames)} of pages they share (${c.frames} frames); ${c.filled} pages read from snapshots, mapped ${c.mapped} times, ${c.dropped} dropped under pressure`);
  lines.push(`resident:   ${mib(m.processResidentBytes)} (the host process)`);
  return lines;
}

async function set(argv: string[]): Promise<number> {
  const { values: v, positionals } = parse(argv, { weight: { type: "string" }, cap: { type: "string" }, pin: { type: "string" }, balloon: { type: "string" } }, "vm set");
  const name = oneName(positionals, "vm set");
  const body: Record<string, unknown> = {};
  if (v.balloon !== undefined) body.balloonBytes = parseSizeOrZero("--balloon", v.balloon as string);
  if (v.weight !== undefined) body.weight = intFlag("--weight", v.weight as string, 1, 65535);
  if (v.cap !== undefined) body.capPct = intFlag("--cap", v.cap as string, 0, 6400);
  if (v.pin !== undefined) body.affinity = (v.pin as string) === "all" ? [] : parsePin(v.pin as string);
  if (Object.keys(body).length === 0) throw new UsageError("vm set: nothing to set (--weight, --cap, --pin, --balloon)");
  await call(clientSocketPath(v.host as string | undefined), "PATCH", vmPath(name), body);
  return 0;
}

async function logs(argv: string[]): Promise<number> {
  const { values: v, positionals } = parse(argv, { follow: { type: "boolean", short: "f" } }, "vm logs");
  const name = oneName(positionals, "vm logs");
  const res = await rawRequest(clientSocketPath(v.host as string | undefined), "GET", vmPath(name, `/logs${v.follow ? "?follow=true" : ""}`));
  if ((res.statusCode ?? 500) >= 400) {
    throw await failureOf(res);
  }
  for await (const c of res) {
    if (!process.stdout.write(c as Buffer)) await new Promise((r) => process.stdout.once("drain", r));
  }
  return 0;
}

async function consoleCmd(argv: string[]): Promise<number> {
  const { values: v, positionals } = parse(argv, { "read-only": { type: "boolean" } }, "vm console");
  return attachConsole(clientSocketPath(v.host as string | undefined), oneName(positionals, "vm console"), v["read-only"] === true);
}

/** vm exec's own options that take a value (the word after, unless written --opt=value). */
const EXEC_VALUE_OPTIONS = new Set(["--host", "-e", "--env", "-w", "--workdir"]);

/** `vm exec NAME [-t] [-e NAME=VALUE]... [-w DIR] [--] CMD ARGS...`: options of its own only before the command. */
async function execCmd(argv: string[]): Promise<number> {
  const dashes = argv.indexOf("--");
  // Without "--", the command starts at the second word that is no option of ours.
  let split = dashes;
  if (split < 0) {
    let names = 0;
    for (split = 0; split < argv.length; split++) {
      if (EXEC_VALUE_OPTIONS.has(argv[split])) split++;
      else if (/^--(host|env|workdir)=|^-[it]+$|^--(tty|interactive)$/.test(argv[split])) continue;
      else if (++names === 2) break;
    }
  }
  const own = argv.slice(0, split);
  const command = argv.slice(dashes < 0 ? split : split + 1);
  const { values: v, positionals } = parse(own, {
    env: { type: "string", multiple: true, short: "e" }, workdir: { type: "string", short: "w" },
    tty: { type: "boolean", short: "t" }, interactive: { type: "boolean", short: "i" },
  }, "vm exec");
  const name = oneName(positionals, "vm exec");
  if (command.length === 0) throw new UsageError("vm exec: no command (vm exec NAME [--] CMD ARGS...)");
  const opts = { env: (v.env as string[] | undefined) ?? [], cwd: v.workdir as string | undefined, tty: v.tty === true };
  // Checked here, so a bad one is a usage error before anything reaches the guest.
  try {
    if (opts.env.length) envFrame(opts.env);
    if (opts.cwd !== undefined) cwdFrame(opts.cwd);
  } catch (e) {
    if (e instanceof AgentProtocolError) throw new UsageError(`vm exec: ${e.message}`);
    throw e;
  }
  return execInVm(clientSocketPath(v.host as string | undefined), name, command, process, opts);
}

async function wait(argv: string[]): Promise<number> {
  const { values: v, positionals } = parse(argv, {}, "vm wait");
  const name = oneName(positionals, "vm wait");
  const outcome = (await call(clientSocketPath(v.host as string | undefined), "GET", vmPath(name, "/wait"))) as RunOutcome;
  const kind = outcome.end.kind;
  if (kind !== "poweroff" && kind !== "exit-status") process.stderr.write(`tsvisor: VM '${name}': ${describeEnd(outcome.end)}\n`);
  return outcome.exitStatus;
}

/** "64.0 MiB" */
const mibText = (bytes: number) => `${(bytes / (1 << 20)).toFixed(1)} MiB`;

async function snapshot(argv: string[]): Promise<number> {
  const { values: v, positionals } = parse(argv, { diff: { type: "boolean" }, live: { type: "boolean" }, "stay-paused": { type: "boolean" }, disks: { type: "string" } }, "vm snapshot");
  if (v.diff && v.live) throw new UsageError("vm snapshot: --diff or --live, not both (a live snapshot is a full one)");
  if (positionals.length !== 2) throw new UsageError("vm snapshot: expected NAME FILE");
  if (v.disks !== undefined && v.disks !== "overlay") throw new UsageError(`vm snapshot: --disks: expected overlay, got '${v.disks as string}'`);
  const [name, file] = positionals;
  const body: Record<string, unknown> = { path: resolve(file) };
  if (v.diff) body.diff = true;
  if (v.live) body.live = true;
  if (v["stay-paused"]) body.stayPaused = true;
  if (v.disks !== undefined) body.disks = v.disks;
  const socket = clientSocketPath(v.host as string | undefined);
  const r = await watched<SnapshotView>(watchSnapshot(socket, name), call(socket, "POST", vmPath(name, "/snapshot"), body));
  const overlays = (r.overlays ?? []).map((o) => `; ${o.disk} frozen, the VM goes on with ${o.overlay}`).join("");
  process.stdout.write(`snapshot of ${r.name} written to ${file}: ${mibText(r.pages.total * PAGE)} RAM, ${mibText(r.bytes)} stored (${r.pages.stored} pages), ${r.seconds.toFixed(2)} s${r.pausedMs !== undefined ? `, paused ${Math.round(r.pausedMs)} ms` : ""}${r.throttlePct ? ` (vCPUs slowed ${r.throttlePct} % to converge)` : ""}${overlays}\n`);
  return 0;
}

async function restore(argv: string[]): Promise<number> {
  const { values: v, positionals } = parse(argv, { name: { type: "string" }, paused: { type: "boolean" }, "keep-macs": { type: "boolean" } }, "vm restore");
  if (positionals.length !== 1) throw new UsageError(`vm restore: expected one snapshot FILE${positionals.length > 1 ? `, got '${positionals.join(" ")}'` : ""}`);
  const file = positionals[0];
  const body: Record<string, unknown> = { path: resolve(file) };
  if (v.name !== undefined) body.name = v.name;
  if (v.paused) body.paused = true;
  if (v["keep-macs"]) body.keepMacs = true;
  const view = (await call(clientSocketPath(v.host as string | undefined), "POST", "/v1/restore", body)) as VmView;
  process.stdout.write(`VM ${view.name} restored from ${file} (${view.state})\n`);
  return 0;
}

async function migrate(argv: string[]): Promise<number> {
  const { values: v, positionals } = parse(argv, {
    to: { type: "string" }, token: { type: "string" }, postcopy: { type: "boolean" }, "postcopy-auto": { type: "boolean" }, "max-downtime": { type: "string" }, "max-bandwidth": { type: "string" },
    "copy-disks": { type: "boolean" }, tls: { type: "boolean" },
  }, "vm migrate");
  const name = oneName(positionals, "vm migrate");
  if (v.to === undefined) throw new UsageError("vm migrate: --to HOST:PORT (the target host's --migration-listen) is required");
  const to = v.to as string;
  parseListen(to, "--to");
  const token = (v.token as string | undefined) ?? process.env.TSVISOR_MIGRATION_TOKEN;
  if (!token) throw new UsageError("vm migrate: the target's migration token is needed: --token TOKEN or $TSVISOR_MIGRATION_TOKEN");
  if (v.postcopy && v["postcopy-auto"]) throw new UsageError("vm migrate: --postcopy or --postcopy-auto, not both");
  const body: Record<string, unknown> = { to, token };
  if (v.postcopy) body.postcopy = true;
  if (v["postcopy-auto"]) body.postcopy = "auto";
  if (v["copy-disks"]) body.copyDisks = true;
  if (v.tls) body.tls = true;
  if (v["max-downtime"] !== undefined) body.maxDowntimeMs = intFlag("--max-downtime", v["max-downtime"] as string, 1, 600_000);
  if (v["max-bandwidth"] !== undefined) body.maxBandwidthMiBps = intFlag("--max-bandwidth", v["max-bandwidth"] as string, 1, 1 << 20);
  const socket = clientSocketPath(v.host as string | undefined);
  const r = await watched<MigrateView>(watchMigration(socket, name), call(socket, "POST", vmPath(name, "/migrate"), body));
  const disks = r.diskBytes !== undefined ? ` (disks: ${mibText(r.diskBytes)})` : "";
  process.stdout.write(`VM ${r.name} migrated to ${to}: ${r.rounds} rounds, ${mibText(r.sentBytes)} sent${disks}, downtime ${Math.round(r.downtimeMs)} ms, ${(r.totalMs / 1000).toFixed(1)} s\n`);
  return 0;
}

/** "1.2 MiB/s", "350 MiB/s" */
function rateText(bytesPerSec: number): string {
  const m = bytesPerSec / (1 << 20);
  return `${m < 10 ? m.toFixed(1) : Math.round(m)} MiB/s`;
}

/** One line of a migration's progress: `migrating x: round 3, 41.2 MiB sent, 120 pages dirty (1.2 MiB/s), ...`. */
export function migrationProgressLine(s: MigrationStatus): string {
  const p = s.progress!;
  const phase = s.phase === "final" ? "; final phase, paused" : s.phase === "postcopy" ? "; post-copy, running on the target" : p.inRound ? "; sending" : "";
  return `migrating ${s.name}: round ${p.round}, ${mibText(p.sentBytes)} sent, ${p.dirtyPages} pages dirty (${rateText(p.dirtyRateBytesPerSec)}), ` +
    (p.dirtyDiskBytes !== undefined ? `${mibText(p.dirtyDiskBytes)} of disk changed, ` : "") +
    `link ${rateText(p.bandwidthBytesPerSec)}, expected downtime ${Math.round(p.expectedDowntimeMs)} ms, throttle ${p.throttlePct}%${phase}`;
}

const FIRST_PROGRESS_POLL_MS = 100;

/**
 * While a long request is pending: `look` about every 500 ms (on a
 * connection of its own), its line (and step: ProgressLine) shown on stderr.
 * Returns the stop. A failed look (an older host without the endpoint)
 * shows nothing.
 */
function watchProgress(look: () => Promise<{ text: string; step: string } | undefined>, everyMs = 500): () => void {
  const line = new ProgressLine();
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const poll = async () => {
    try {
      const shown = await look();
      if (!stopped && shown) line.update(shown.text, shown.step);
    } catch {
      // no status yet, or none to have
    }
    if (!stopped) timer = setTimeout(poll, everyMs);
  };
  // The first look comes early: a migration of an idle or small guest is over in about a second.
  timer = setTimeout(poll, FIRST_PROGRESS_POLL_MS);
  return () => {
    stopped = true;
    clearTimeout(timer);
    line.done();
  };
}

/** The answer to `pending`, its progress shown (a watch* below) until it comes. */
async function watched<T>(stopWatching: () => void, pending: Promise<unknown>): Promise<T> {
  try {
    return (await pending) as T;
  } finally {
    stopWatching();
  }
}

/** A migration's rounds, from GET .../migration. */
function watchMigration(socket: string, name: string): () => void {
  return watchProgress(async () => {
    const s = (await call(socket, "GET", vmPath(name, "/migration"))) as MigrationStatus;
    if (s.state !== "active" || !s.progress) return undefined;
    return { text: migrationProgressLine(s), step: `${s.progress.round} ${s.phase ?? ""} ${s.progress.inRound ? "sending" : ""}` };
  });
}

/** A snapshot's pages written, from GET /v1/vms/NAME (its `snapshot` while one is written); a line each tenth without a terminal. */
function watchSnapshot(socket: string, name: string): () => void {
  return watchProgress(async () => {
    const p = ((await call(socket, "GET", vmPath(name))) as VmView).snapshot;
    if (!p || p.totalPages === 0) return undefined;
    const r = p.liveRound;
    if (r) {
      // A live snapshot's rounds: pages the running guest wrote again meanwhile, then the last ones in the pause.
      const what = r.paused ? "paused, the last pages" : `running, round ${r.round} of pages written again`;
      return { text: `snapshot of ${name}: its RAM gone through; ${what}: ${r.donePages} of ${r.pages}`, step: `${r.round} ${r.paused}` };
    }
    const pct = Math.floor((p.donePages / p.totalPages) * 100);
    return { text: `snapshot of ${name}: ${pct} % of its RAM (${mibText(p.donePages * PAGE)} of ${mibText(p.totalPages * PAGE)}) gone through`, step: String(Math.floor(pct / 10)) };
  });
}
