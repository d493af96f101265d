// `tsvisor vm console`: several viewers and one writer on a running VM's
// console, Ctrl-A X detaching with the VM running on, the stream ending when
// the VM stops; and the hub dropping a viewer that never reads. The guest is
// the bare echo.c, which echoes its UART input and powers off on 'q'.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { Duplex } from "node:stream";
import { request } from "node:http";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { bin, root } from "../cli/test-tsvisor.js";
import { buildBareKernel, bareProgram, haveBareCompiler } from "../host/testing/bare-kernel.js";
import { ConsoleHub } from "./console-hub.js";
import { TestHost } from "./test-host.js";

const skip = haveBareCompiler() ? false : "needs riscv64-unknown-elf-gcc (npm test installs it)";
const dir = mkdtempSync(join(tmpdir(), "tsvisor-console-"));
after(() => rmSync(dir, { recursive: true, force: true }));

interface Attached {
  child: ChildProcessWithoutNullStreams;
  out: () => string;
  err: () => string;
  exit: Promise<number | null>;
}

const clients: ChildProcessWithoutNullStreams[] = [];

function attach(host: TestHost, ...args: string[]): Attached {
  const child = spawn(process.execPath, [bin, "vm", "console", ...args, "--host", host.socket]);
  clients.push(child);
  let out = "";
  let err = "";
  child.stdout.on("data", (d: Buffer) => (out += d));
  child.stderr.on("data", (d: Buffer) => (err += d));
  const exit = new Promise<number | null>((resolve) => child.on("close", resolve));
  return { child, out: () => out, err: () => err, exit };
}

async function until(what: string, f: () => boolean, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test("console: a writer and a viewer, Ctrl-A X detaches (the VM runs on), the stream ends with the VM", { skip, timeout: 60_000 }, async () => {
  buildBareKernel(bareProgram("echo"));
  const host = await TestHost.start(dir);
  try {
    const kernel = join(root, "build", "bare", "echo.Image");
    assert.equal((await host.vm("create", "e", "--kernel", kernel, "--append", "", "--mem", "64M", "--start")).status, 0);
    for (let i = 0; !(await host.vm("logs", "e")).stdout.includes("echo ready"); i++) {
      assert.ok(i < 400, "echo never got ready");
      await new Promise((r) => setTimeout(r, 25));
    }
    const writer = attach(host, "e");
    await until("the writer attached", () => /attached to VM 'e'; Ctrl-A X detaches/.test(writer.err()));
    const viewer = attach(host, "e");
    await until("the viewer attached", () => /read-only: another client types/.test(viewer.err()));
    viewer.child.stdin.write("zzz"); // a viewer's keys go nowhere
    writer.child.stdin.write("hello");
    await until("the echo on both", () => writer.out().includes("hello") && viewer.out().includes("hello"));
    assert.ok(!writer.out().includes("z") && !viewer.out().includes("z"));

    writer.child.stdin.write("\x01x");
    assert.equal(await writer.exit, 0);
    assert.match(writer.err(), /detached from VM 'e' \(it runs on\)/);
    assert.equal((await host.api("GET", "/v1/vms/e")).json.state, "running");

    // The writer's place is free again.
    const second = attach(host, "e");
    await until("the second writer attached", () => /attached to VM 'e'; Ctrl-A X/.test(second.err()));
    second.child.stdin.write("\x01\x01"); // Ctrl-A Ctrl-A sends one Ctrl-A
    second.child.stdin.write("q");
    for (const a of [second, viewer]) {
      assert.equal(await a.exit, 0);
      assert.match(a.err(), /VM 'e' stopped/);
    }
    assert.match(second.out(), /\x01bye/);
    assert.equal((await host.vm("wait", "e")).status, 0);

    // Not running: 409; a plain GET: 426; another protocol: 400.
    const stopped = attach(host, "e");
    assert.equal(await stopped.exit, 1);
    assert.match(stopped.err(), /^tsvisor: VM 'e' is stopped: its console exists only while it runs\n$/);
    assert.equal((await host.api("GET", "/v1/vms/e/console")).status, 426);
    const wrong = await new Promise<number>((resolve, reject) => {
      const req = request({ socketPath: host.socket, path: "/v1/vms/e/console", headers: { connection: "Upgrade", upgrade: "websocket" } });
      req.on("response", (res) => resolve(res.statusCode ?? 0));
      req.on("upgrade", () => reject(new Error("upgraded")));
      req.on("error", reject);
      req.end();
    });
    assert.equal(wrong, 400);
  } finally {
    assert.equal(await host.stop(), 0);
    for (const c of clients) c.kill("SIGKILL");
  }
});

test("the console hub drops a viewer that never reads, and the others go on", () => {
  const hub = new ConsoleHub();
  const stuck = new Duplex({ read() {}, write(_c, _e, _cb) { /* never done: its buffer only grows */ } });
  const got: Buffer[] = [];
  const fine = new Duplex({ read() {}, write(c, _e, cb) { got.push(c); cb(); } });
  const target = { input: () => 0, backlog: () => 0 };
  assert.equal(hub.attach(stuck, true, target), true);
  assert.equal(hub.attach(fine, true, target), false, "one writer");
  const chunk = new Uint8Array(64 << 10);
  for (let i = 0; i < 40; i++) hub.output(chunk);
  assert.ok(stuck.destroyed);
  assert.equal(hub.viewerCount, 1);
  assert.equal(Buffer.concat(got).length, 40 * chunk.length);
  // The writer's place is free for the next one.
  const next = new Duplex({ read() {}, write(_c, _e, cb) { cb(); } });
  assert.equal(hub.attach(next, true, target), true);
});
