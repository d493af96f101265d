// The host daemon's VM table over one engine Host: create, look up, delete,
// persist (state directory), restore at start, stop everything at the end.
import type { Host } from "../host/host.js";
import { VERSION } from "../cli/version.js";
import { ApiError } from "./errors.js";
import { checkName, parseDefinition, parsePatch, type HostLimits, type VmDefinition } from "./definition.js";
import { ManagedVm } from "./managed-vm.js";
import { StateStore } from "./store.js";

export interface VmView {
  name: string;
  state: string;
  cpus: number;
  memBytes: number;
  cpuPercent: number;
  uptimeSeconds: number;
  config: VmDefinition;
  lastRun?: { end: unknown; exitStatus: number };
}

export class Daemon {
  private readonly vms = new Map<string, ManagedVm>();
  readonly limits: HostLimits;

  constructor(readonly engine: Host, private readonly store: StateStore, readonly log: (line: string) => void) {
    const info = engine.info();
    this.limits = { pcpus: info.pcpus, poolBytes: info.pool.limitBytes };
  }

  /** Definitions from the state directory, stopped, or started when autostart. */
  restore(): void {
    for (const { file, data } of this.store.load()) {
      try {
        if (data instanceof Error) throw data;
        const def = parseDefinition(data, this.limits);
        if (this.vms.has(def.name)) throw new Error(`a second definition of '${def.name}'`);
        this.vms.set(def.name, this.newVm(def, true));
        this.log(`vm ${def.name} restored from ${file}`);
      } catch (e) {
        this.log(`skipping ${file}: ${(e as Error).message}`);
      }
    }
    for (const vm of this.vms.values()) {
      if (vm.def.autostart) vm.start().catch(() => {}); // the failure is logged
    }
  }

  private newVm(def: VmDefinition, restored = false): ManagedVm {
    return new ManagedVm(def, this.engine, this.log, restored);
  }

  hostInfo() {
    const info = this.engine.info();
    return {
      version: VERSION,
      pcpus: info.pcpus,
      vms: this.vms.size,
      pool: { limitBytes: info.pool.limitBytes, committedBytes: info.pool.committedBytes, usedBytes: info.pool.framesInUse * 4096 },
      memory: this.engine.memory.stats(),
    };
  }

  list(): ManagedVm[] {
    return [...this.vms.values()];
  }

  get(name: string): ManagedVm {
    checkName(name);
    const vm = this.vms.get(name);
    if (!vm) throw new ApiError(404, `no VM named '${name}'`);
    return vm;
  }

  create(body: unknown): ManagedVm {
    const name = typeof body === "object" && body !== null && !Array.isArray(body) ? (body as { name?: unknown }).name : undefined;
    if (typeof name === "string" && this.vms.has(name)) throw new ApiError(409, `a VM named '${name}' exists already`);
    const def = parseDefinition(body, this.limits);
    if (this.vms.has(def.name)) throw new ApiError(409, `a VM named '${def.name}' exists already`);
    const vm = this.newVm(def);
    this.store.save(def);
    this.vms.set(def.name, vm);
    this.log(`vm ${def.name} defined`);
    return vm;
  }

  update(vm: ManagedVm, body: unknown): void {
    vm.update(parsePatch(body, this.limits));
    this.store.save(vm.def);
  }

  remove(vm: ManagedVm): void {
    if (vm.state !== "created" && vm.state !== "stopped") throw new ApiError(409, `VM '${vm.name}' is ${vm.state}: stop it before removing it`);
    this.store.remove(vm.name);
    this.vms.delete(vm.name);
    this.log(`vm ${vm.name} removed`);
  }

  view(vm: ManagedVm): VmView {
    const s = vm.stats();
    const out: VmView = {
      name: vm.name, state: vm.state, cpus: vm.def.cpus, memBytes: vm.def.memBytes,
      cpuPercent: s.cpuPercent, uptimeSeconds: s.uptimeSeconds, config: vm.def,
    };
    if (vm.lastOutcome) out.lastRun = vm.lastOutcome;
    return out;
  }

  /** Stop every VM (their disks flushed and closed). */
  async stopAll(reason: string): Promise<void> {
    await Promise.all(this.list().map((vm) => vm.stop(reason)));
  }
}
