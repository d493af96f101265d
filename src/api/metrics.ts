// GET /metrics: the host and its VMs in the OpenMetrics 1.0 text format
// (names prefixed tsvisor_, units in the names and in # UNIT, counters as
// _total, # EOF at the end). Written here rather than with prom-client: the
// values already live in the engine and are read at scrape time, so a
// registry of metric objects would only be filled and emptied again on each
// scrape, and the format is a page of code.
import type { Daemon } from "./daemon.js";

export const OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Record<string, string | number>;

class Family {
  readonly samples: string[] = [];
  constructor(readonly name: string, readonly type: "counter" | "gauge", readonly help: string, readonly unit?: string) {}

  add(labels: Labels, value: number): void {
    const suffix = this.type === "counter" ? "_total" : "";
    const l = Object.entries(labels).map(([k, v]) => `${k}="${String(v).replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n")}"`).join(",");
    this.samples.push(`${this.name}${suffix}${l ? `{${l}}` : ""} ${Number.isFinite(value) ? value : 0}`);
  }

  text(): string {
    const head = [`# TYPE ${this.name} ${this.type}`];
    if (this.unit) head.push(`# UNIT ${this.name} ${this.unit}`);
    head.push(`# HELP ${this.name} ${this.help}`);
    return [...head, ...this.samples].join("\n") + "\n";
  }
}

export function metricsText(daemon: Daemon): string {
  const info = daemon.hostInfo();
  const F = (name: string, type: "counter" | "gauge", help: string, unit?: string) => new Family(`tsvisor_${name}`, type, help, unit);
  const pcpus = F("host_pcpus", "gauge", "pCPU worker threads.");
  pcpus.add({}, info.pcpus);
  const poolLimit = F("pool_limit_bytes", "gauge", "Upper bound of the frame pool all VMs share.", "bytes");
  poolLimit.add({}, info.pool.limitBytes);
  const frames = F("pool_frames", "gauge", "4 KiB frames of the pool by state: used, free (committed host memory not in use), uncommitted (below the limit, not yet taken from the host).");
  const committed = Math.floor(info.pool.committedBytes / 4096);
  const used = Math.floor(info.pool.usedBytes / 4096);
  frames.add({ state: "used" }, used);
  frames.add({ state: "free" }, Math.max(0, committed - used));
  frames.add({ state: "uncommitted" }, Math.max(0, Math.floor(info.pool.limitBytes / 4096) - committed));

  // The memory manager (memory/manager/memory-manager.ts).
  const mem = info.memory;
  const hostFrames = F("host_frames", "gauge", "4 KiB frames of the pool by state as the memory manager counts them: free (freed or never handed out), in_use, shared (by page sharing).");
  hostFrames.add({ state: "free" }, mem.frames.free);
  hostFrames.add({ state: "in_use" }, mem.frames.inUse);
  hostFrames.add({ state: "shared" }, mem.frames.shared);
  const poolBytes = F("host_pool_bytes", "gauge", "Size of the frame pool all VMs share (tsvisor host --mem).", "bytes");
  poolBytes.add({}, mem.poolBytes);
  const overcommit = F("host_overcommit_ratio", "gauge", "The VMs' RAM added up, over the pool.", "ratio");
  overcommit.add({}, mem.overcommit);
  const compressedBytes = F("host_compressed_bytes", "gauge", "The compressed page pool by kind: capacity, used (compressed), stored (the pages' size before compression); none when compression is off.", "bytes");
  if (mem.compressed) {
    compressedBytes.add({ kind: "capacity" }, mem.compressed.capacityBytes);
    compressedBytes.add({ kind: "used" }, mem.compressed.usedBytes);
    compressedBytes.add({ kind: "stored" }, mem.compressed.storedBytes);
  }
  const swapBytes = F("host_swap_bytes", "gauge", "The swap file by kind: capacity, used; none without a swap file.", "bytes");
  if (mem.swap) {
    swapBytes.add({ kind: "capacity" }, mem.swap.capacityBytes);
    swapBytes.add({ kind: "used" }, mem.swap.usedBytes);
  }
  const rss = F("host_process_resident_bytes", "gauge", "The host process's resident memory.", "bytes");
  rss.add({}, mem.processResidentBytes);
  const merged = F("host_sharing_merged_pages", "counter", "Guest pages page sharing merged, since the host started.");
  if (mem.sharing) merged.add({}, mem.sharing.merged);
  const reclaimed = F("host_reclaimed_pages", "counter", "Guest pages reclaim took out, by how: zero (dropped), compressed, swapped (raw), moved_to_swap (compressed pages pushed on to swap).");
  reclaimed.add({ how: "zero" }, mem.reclaim.zero);
  reclaimed.add({ how: "compressed" }, mem.reclaim.compressed);
  reclaimed.add({ how: "swapped" }, mem.reclaim.swapped);
  reclaimed.add({ how: "moved_to_swap" }, mem.reclaim.movedToSwap);
  const waiting = F("host_vms_waiting_for_memory", "gauge", "VMs the host paused until memory is free.");
  waiting.add({}, mem.waiting.length);

  const up = F("vm_running", "gauge", "1 while the VM runs or is paused, else 0.");
  const resident = F("vm_resident_bytes", "gauge", "Guest RAM backed by host frames.", "bytes");
  const memory = F("vm_memory_bytes", "gauge", "Guest RAM size.", "bytes");
  const run = F("vcpu_run_seconds", "counter", "Time the vCPU ran on a pCPU, in this run of its VM.", "seconds");
  const wait = F("vcpu_wait_seconds", "counter", "Time the vCPU was runnable but not running, in this run of its VM.", "seconds");
  const insns = F("vcpu_instructions", "counter", "Guest instructions the vCPU executed, in this run of its VM.");
  const exits = F("vm_exits", "counter", "VM exits by reason, in this run of the VM.");
  const requests = F("virtio_requests", "counter", "Requests served per virtio device queue, in this run of the VM.");
  const bytesIn = F("virtio_read_bytes", "counter", "Bytes the device read from guest memory, per queue.", "bytes");
  const bytesOut = F("virtio_written_bytes", "counter", "Bytes the device wrote to guest memory, per queue.", "bytes");
  const netFrames = F("net_frames", "counter", "Frames through each network card's host side, by direction (to the guest, from the guest), in this run of the VM.");
  const netBytes = F("net_bytes", "counter", "Bytes through each network card's host side, by direction, in this run of the VM.", "bytes");
  const netDrops = F("net_port_drops", "counter", "Frames a card's switch port dropped, by reason (spoofed-mac, spoofed-ip, vlan-tag, rate-limit-in, ...), in this run of the VM.");
  const pages = F("vm_pages", "gauge", "Guest pages (4 KiB) by state: private, shared, untouched, zero, ballooned, reported, compressed, swapped, busy.");
  const cowBreaks = F("vm_cow_breaks", "counter", "Writes to shared pages that took a private copy, in this run of the VM.");
  const swapIns = F("vm_swap_ins", "counter", "Swapped guest pages a fault brought back, in this run of the VM.");
  const decompressions = F("vm_decompressions", "counter", "Compressed guest pages a fault brought back, in this run of the VM.");
  const balloonTarget = F("balloon_target_bytes", "gauge", "Guest RAM the host asks the VM's balloon to hold.", "bytes");
  const balloonActual = F("balloon_actual_bytes", "gauge", "Guest RAM the VM's balloon driver says it holds.", "bytes");
  const guestMemory = F("guest_memory_bytes", "gauge", "The guest's own memory statistics from its balloon driver, by kind: free, available, total, caches.", "bytes");
  const guestSwap = F("guest_swap_pages", "counter", "Pages the guest swapped, by direction (in, out), since it booted, as its balloon driver reports (its bytes over 4 KiB pages).");
  const guestFaults = F("guest_faults", "counter", "Page faults in the guest, by kind (major, minor), since it booted, as its balloon driver reports.");
  const guestAge = F("guest_stats_age_seconds", "gauge", "How old the guest's last memory statistics report is.", "seconds");
  for (const vm of daemon.list()) {
    const s = vm.stats();
    const live = s.state === "running" || s.state === "paused";
    up.add({ vm: vm.name }, live ? 1 : 0);
    memory.add({ vm: vm.name }, vm.def.memBytes);
    if (!live) continue;
    resident.add({ vm: vm.name }, s.residentBytes);
    for (const c of s.vcpus) {
      run.add({ vm: vm.name, vcpu: c.index }, c.runSeconds);
      wait.add({ vm: vm.name, vcpu: c.index }, c.waitSeconds);
      insns.add({ vm: vm.name, vcpu: c.index }, c.instructions);
    }
    for (const [reason, n] of Object.entries(s.exits)) exits.add({ vm: vm.name, reason }, n);
    for (const n of s.nets) {
      netFrames.add({ vm: vm.name, card: n.name, direction: "to_guest" }, n.rxFrames);
      netFrames.add({ vm: vm.name, card: n.name, direction: "from_guest" }, n.txFrames);
      netBytes.add({ vm: vm.name, card: n.name, direction: "to_guest" }, n.rxBytes);
      netBytes.add({ vm: vm.name, card: n.name, direction: "from_guest" }, n.txBytes);
      for (const [reason, k] of Object.entries(n.port?.drops ?? {})) netDrops.add({ vm: vm.name, card: n.name, reason }, k);
    }
    if (s.memory) {
      for (const [state, n] of Object.entries(s.memory.pages)) pages.add({ vm: vm.name, state }, n);
      cowBreaks.add({ vm: vm.name }, s.memory.cowBreaks);
      swapIns.add({ vm: vm.name }, s.memory.swapIns);
      decompressions.add({ vm: vm.name }, s.memory.decompressions);
    }
    if (s.balloon) {
      balloonTarget.add({ vm: vm.name }, s.balloon.targetPages * 4096);
      balloonActual.add({ vm: vm.name }, s.balloon.actualPages * 4096);
      const g = s.balloon.guest;
      for (const [kind, n] of [["free", g.freeBytes], ["available", g.availableBytes], ["total", g.totalBytes], ["caches", g.cachesBytes]] as const) {
        if (n !== undefined) guestMemory.add({ vm: vm.name, kind }, n);
      }
      if (g.swapIn !== undefined) guestSwap.add({ vm: vm.name, dir: "in" }, Math.floor(g.swapIn / 4096));
      if (g.swapOut !== undefined) guestSwap.add({ vm: vm.name, dir: "out" }, Math.floor(g.swapOut / 4096));
      if (g.majorFaults !== undefined) guestFaults.add({ vm: vm.name, kind: "major" }, g.majorFaults);
      if (g.minorFaults !== undefined) guestFaults.add({ vm: vm.name, kind: "minor" }, g.minorFaults);
      if (g.ageSeconds !== undefined) guestAge.add({ vm: vm.name }, g.ageSeconds);
    }
    for (const q of vm.virtioQueueCounts()) {
      const labels = { vm: vm.name, device: q.device, queue: q.queue };
      requests.add(labels, q.requests);
      bytesIn.add(labels, q.bytesRead);
      bytesOut.add(labels, q.bytesWritten);
    }
  }
  const all = [
    pcpus, poolLimit, frames, hostFrames, poolBytes, overcommit, compressedBytes, swapBytes, rss, merged, reclaimed, waiting,
    up, memory, resident, run, wait, insns, exits, requests, bytesIn, bytesOut, netFrames, netBytes, netDrops,
    pages, cowBreaks, swapIns, decompressions, balloonTarget, balloonActual, guestMemory, guestSwap, guestFaults, guestAge,
  ];
  return all.map((f) => f.text()).join("") + "# EOF\n";
}
