// `tsvisor vm ...` and `tsvisor host`: the command line over the API.
// Output is for people; --json (ls, info) gives the API's objects.
import { resolveNetSpecs } from "../cli/vm-devices.js";
import { parseArgs } from "node:util";
import { resolve } from "node:path";
import { UsageError, parseSize } from "../cli/size.js";
import { call, rawRequest, failureOf, ApiFailure } from "./client.js";
import { clientSocketPath, defaultSocketPath, defaultStateDir } from "./paths.js";
import { runDaemon } from "./server.js";
import { attachConsole } from "./console-client.js";
import { describeEnd, type StatsView, type RunOutcome } from "./managed-vm.js";
import type { VmView } from "./daemon.js";

export const VM_HELP = `  host [--socket PATH] [--pcpus N] [--mem SIZE] [--state-dir DIR] [--listen HOST:PORT]
                          run the host daemon in the foreground (API on a Unix socket;
                          --listen: also on TCP, behind a bearer token)
  vm create NAME [options of run] [--weight W] [--cap PCT] [--pin CPUS]
            [--autostart] [--start] [-- CMD ARGS...]     define a VM on the host
  vm start|pause|resume|stop|rm NAME
  vm ls [--json]          the host's VMs: name, state, vCPUs, memory, CPU %, uptime
  vm info NAME [--json]   state, config, CPU seconds per vCPU, exits, memory
  vm set NAME [--weight W] [--cap PCT] [--pin CPUS]       scheduling, also while it runs
  vm logs NAME [-f]       the console output the host kept (the last MiB)
  vm console NAME [--read-only]   this terminal on its console (Ctrl-A X detaches)
  vm wait NAME            wait until it stops; exit with its command's status
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

function oneName(positionals: string[], what: string): string {
  if (positionals.length !== 1) throw new UsageError(`${what}: expected one VM name${positionals.length > 1 ? `, got '${positionals.join(" ")}'` : ""}`);
  return positionals[0];
}

const vmPath = (name: string, rest = "") => `/v1/vms/${encodeURIComponent(name)}${rest}`;

export async function hostCommand(argv: string[]): Promise<number> {
  const { values: v, positionals } = parse(argv, { socket: { type: "string" }, pcpus: { type: "string" }, mem: { type: "string" }, "state-dir": { type: "string" }, listen: { type: "string" } }, "host");
  if (positionals.length > 0) throw new UsageError(`host: unexpected argument '${positionals[0]}'`);
  if (v.host !== undefined) throw new UsageError("host: --socket sets the daemon's socket (--host is for clients)");
  return runDaemon({
    socket: resolve((v.socket as string | undefined) ?? defaultSocketPath()),
    stateDir: resolve((v["state-dir"] as string | undefined) ?? defaultStateDir()),
    pcpus: v.pcpus !== undefined ? intFlag("--pcpus", v.pcpus as string, 1, 64) : undefined,
    memLimitBytes: v.mem !== undefined ? parseSize("--mem", v.mem as string) : undefined,
    listen: v.listen !== undefined ? parseListen(v.listen as string) : undefined,
  });
}

/** "127.0.0.1:8080", "[::1]:8080" */
function parseListen(text: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(text);
  if (!m || Number(m[3]) > 65535) throw new UsageError(`--listen: expected HOST:PORT, e.g. 127.0.0.1:8080, got '${text}'`);
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
    case undefined: throw new UsageError("vm: expected a subcommand: create, start, pause, resume, stop, rm, ls, info, set, logs, console, wait");
    default: throw new UsageError(`vm: unknown subcommand '${sub}' (create, start, pause, resume, stop, rm, ls, info, set, logs, console, wait)`);
  }
}

async function create(argv: string[]): Promise<number> {
  const dashes = argv.indexOf("--");
  const own = dashes < 0 ? argv : argv.slice(0, dashes);
  const command = dashes < 0 ? undefined : argv.slice(dashes + 1);
  const { values: v, positionals } = parse(own, {
    kernel: { type: "string" }, initrd: { type: "string" }, append: { type: "string" },
    cpus: { type: "string" }, mem: { type: "string" }, disk: { type: "string", multiple: true }, net: { type: "string", multiple: true },
    publish: { type: "string", short: "p", multiple: true },
    console: { type: "string" }, weight: { type: "string" }, cap: { type: "string" }, pin: { type: "string" },
    autostart: { type: "boolean" }, start: { type: "boolean" },
  }, "vm create");
  const name = oneName(positionals, "vm create");
  if (command !== undefined && command.length === 0) throw new UsageError("vm create: no command after --");
  const body: Record<string, unknown> = { name };
  if (v.kernel !== undefined) body.kernel = resolve(v.kernel as string);
  if (v.initrd !== undefined) body.initrd = resolve(v.initrd as string);
  if (v.append !== undefined) body.append = v.append;
  if (v.cpus !== undefined) body.cpus = intFlag("--cpus", v.cpus as string, 1, 8);
  if (v.mem !== undefined) body.memBytes = parseSize("--mem", v.mem as string);
  if (v.disk !== undefined) body.disks = (v.disk as string[]).map((d) => { const [p, ...o] = d.split(","); return [p ? resolve(p) : p, ...o].join(","); });
  // As `tsvisor run`: the user-mode network unless --net says otherwise.
  body.nets = resolveNetSpecs(v.net as string[] | undefined, v.publish as string[] | undefined);
  if (v.console !== undefined) body.console = v.console;
  if (v.weight !== undefined) body.weight = intFlag("--weight", v.weight as string, 1, 65535);
  if (v.cap !== undefined) body.capPct = intFlag("--cap", v.cap as string, 0, 6400);
  if (v.pin !== undefined) body.affinity = parsePin(v.pin as string);
  if (v.autostart) body.autostart = true;
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
  process.stdout.write(lines.join("\n") + "\n");
  return 0;
}

async function set(argv: string[]): Promise<number> {
  const { values: v, positionals } = parse(argv, { weight: { type: "string" }, cap: { type: "string" }, pin: { type: "string" } }, "vm set");
  const name = oneName(positionals, "vm set");
  const body: Record<string, unknown> = {};
  if (v.weight !== undefined) body.weight = intFlag("--weight", v.weight as string, 1, 65535);
  if (v.cap !== undefined) body.capPct = intFlag("--cap", v.cap as string, 0, 6400);
  if (v.pin !== undefined) body.affinity = (v.pin as string) === "all" ? [] : parsePin(v.pin as string);
  if (Object.keys(body).length === 0) throw new UsageError("vm set: nothing to set (--weight, --cap, --pin)");
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

async function wait(argv: string[]): Promise<number> {
  const { values: v, positionals } = parse(argv, {}, "vm wait");
  const name = oneName(positionals, "vm wait");
  const outcome = (await call(clientSocketPath(v.host as string | undefined), "GET", vmPath(name, "/wait"))) as RunOutcome;
  const kind = outcome.end.kind;
  if (kind !== "poweroff" && kind !== "exit-status") process.stderr.write(`tsvisor: VM '${name}': ${describeEnd(outcome.end)}\n`);
  return outcome.exitStatus;
}
