// GET /metrics of a live daemon with running VMs, parsed by the reference
// OpenMetrics parser (Python's prometheus_client under Debian's /usr/bin/python3, from
// python3-prometheus-client, installed by `npm test`), which rejects any text
// that breaks the format (a missing # EOF, a counter without _total, a unit
// not in the name...).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { root } from "../cli/test-tsvisor.js";
import { buildBareKernel, bareProgram, haveBareCompiler } from "../host/testing/bare-kernel.js";
import { TestHost } from "./test-host.js";

const haveParser = spawnSync("/usr/bin/python3", ["-c", "import prometheus_client.openmetrics.parser"]).status === 0;
const skip = !haveBareCompiler() ? "needs riscv64-unknown-elf-gcc" : !haveParser ? "needs python3-prometheus-client (npm test installs it)" : false;
const dir = mkdtempSync(join(tmpdir(), "tsvisor-metrics-"));
after(() => rmSync(dir, { recursive: true, force: true }));

const PARSE = `
import sys, json
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": f.name, "type": f.type, "unit": f.unit, "samples": [[s.name, s.labels, s.value] for s in f.samples]})
print(json.dumps(out))
`;

test("/metrics is OpenMetrics text an OpenMetrics parser accepts, with per-vCPU, per-VM and pool metrics", { skip }, async () => {
  buildBareKernel(bareProgram("halt"));
  const host = await TestHost.start(dir);
  try {
    const halt = join(root, "build", "bare", "halt.Image");
    for (const name of ["m1", "m2"]) assert.equal((await host.api("POST", "/v1/vms", { name, kernel: halt, append: "", memBytes: 64 << 20, cpus: 2 })).status, 201);
    assert.equal((await host.api("POST", "/v1/vms/m1/start")).status, 200);
    assert.equal((await host.api("PATCH", "/v1/vms/m1", { balloonBytes: 8 << 20 })).status, 200);
    // Until m1 has said its line (it has run), then a little longer.
    for (let i = 0; i < 400 && !(await host.api("GET", "/v1/vms/m1/logs")).text.includes("halted"); i++) await new Promise((r) => setTimeout(r, 25));
    await new Promise((r) => setTimeout(r, 200));
    const r = await host.api("GET", "/metrics");
    assert.equal(r.status, 200);
    assert.ok(r.text.endsWith("# EOF\n"));
    const parsed = spawnSync("/usr/bin/python3", ["-c", PARSE], { input: r.text, encoding: "utf8" });
    assert.equal(parsed.status, 0, `the parser refused it: ${parsed.stderr}\n${r.text}`);
    const families = new Map<string, { type: string; unit: string; samples: [string, Record<string, string>, number][] }>(
      JSON.parse(parsed.stdout).map((f: { name: string }) => [f.name, f]),
    );
    const sample = (family: string, labels: Record<string, string>) =>
      families.get(family)?.samples.find(([, l]) => Object.entries(labels).every(([k, v]) => l[k] === v))?.[2];
    assert.equal(families.get("tsvisor_vcpu_run_seconds")?.type, "counter");
    assert.equal(families.get("tsvisor_vcpu_run_seconds")?.unit, "seconds");
    assert.ok(sample("tsvisor_vcpu_run_seconds", { vm: "m1", vcpu: "0" })! > 0);
    assert.notEqual(sample("tsvisor_vcpu_wait_seconds", { vm: "m1", vcpu: "1" }), undefined);
    assert.ok(sample("tsvisor_vm_exits", { vm: "m1", reason: "mmio" })! > 0);
    assert.equal(sample("tsvisor_vm_running", { vm: "m1" }), 1);
    assert.equal(sample("tsvisor_vm_running", { vm: "m2" }), 0);
    assert.equal(families.get("tsvisor_vm_resident_bytes")?.unit, "bytes");
    assert.ok(sample("tsvisor_pool_frames", { state: "used" })! > 0);
    assert.equal(sample("tsvisor_pool_limit_bytes", {}), 1 << 30);
    for (const [name] of families) assert.match(name, /^tsvisor_/);

    // The memory manager: the host's pool and each running VM's pages and balloon.
    assert.equal(sample("tsvisor_host_pool_bytes", {}), 1 << 30);
    assert.equal(families.get("tsvisor_host_pool_bytes")?.unit, "bytes");
    for (const state of ["free", "in_use", "shared"]) assert.notEqual(sample("tsvisor_host_frames", { state }), undefined, state);
    assert.ok(sample("tsvisor_host_frames", { state: "in_use" })! > 0);
    assert.equal(sample("tsvisor_host_overcommit_ratio", {}), 0.0625, "m1 runs: 64 MiB over a 1 GiB pool");
    assert.equal(sample("tsvisor_host_compressed_bytes", { kind: "capacity" }), 128 << 20, "1/8 of the pool by default");
    assert.equal(families.get("tsvisor_host_swap_bytes")?.samples.length, 0, "no swap file");
    assert.ok(sample("tsvisor_host_process_resident_bytes", {})! > 0);
    for (const state of ["private", "shared", "untouched", "zero", "ballooned", "reported", "compressed", "swapped"]) {
      assert.notEqual(sample("tsvisor_vm_pages", { vm: "m1", state }), undefined, state);
    }
    const pages = families.get("tsvisor_vm_pages")!.samples.filter(([, l]) => l.vm === "m1").reduce((n, [, , v]) => n + v, 0);
    assert.equal(pages, (64 << 20) / 4096);
    assert.equal(sample("tsvisor_vm_pages", { vm: "m2" }), undefined, "m2 is not running");
    assert.equal(families.get("tsvisor_vm_cow_breaks")?.type, "counter");
    for (const f of ["tsvisor_vm_cow_breaks", "tsvisor_vm_swap_ins", "tsvisor_vm_decompressions"]) assert.equal(sample(f, { vm: "m1" }), 0, f);
    assert.equal(sample("tsvisor_balloon_target_bytes", { vm: "m1" }), 8 << 20);
    assert.equal(sample("tsvisor_balloon_actual_bytes", { vm: "m1" }), 0);
    // The bare guest runs no balloon driver: no guest statistics.
    for (const f of ["tsvisor_guest_memory_bytes", "tsvisor_guest_swap_pages", "tsvisor_guest_faults"]) assert.equal(families.get(f)?.samples.length, 0, f);
    assert.equal(families.get("tsvisor_guest_swap_pages")?.type, "counter");
    assert.equal(families.get("tsvisor_guest_memory_bytes")?.unit, "bytes");
  } finally {
    assert.equal(await host.stop(), 0);
  }
});
