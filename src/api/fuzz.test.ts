// A seeded fuzz test of the real server: garbage bytes, truncated requests,
// clients that go away mid-request, and well-formed requests with mutated
// JSON bodies. The host must answer each request it can parse with a JSON
// error or success (never a 500), and go on serving, its running VM too.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { connect } from "node:net";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { root } from "../cli/test-tsvisor.js";
import { buildBareKernel, bareProgram, haveBareCompiler } from "../host/testing/bare-kernel.js";
import { TestHost } from "./test-host.js";

const skip = haveBareCompiler() ? false : "needs riscv64-unknown-elf-gcc (npm test installs it)";
const dir = mkdtempSync(join(tmpdir(), "tsvisor-fuzz-"));
after(() => rmSync(dir, { recursive: true, force: true }));
const SEED = Number(process.env.TSVISOR_FUZZ_SEED ?? 12);
const CASES = 400;

/** xorshift32: the same cases for the same seed. */
function rng(seed: number) {
  let x = seed >>> 0 || 1;
  const next = () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
  return { int: (n: number) => next() % n, pick: <T>(a: readonly T[]): T => a[next() % a.length], bytes: (n: number) => Buffer.from(Array.from({ length: n }, () => next() & 0xff)) };
}

/** Sends `bytes` (then ends, or just drops the connection), collects what comes back within `ms`. */
function exchange(socket: string, bytes: Buffer, how: "end" | "drop" | "stall", ms = 300): Promise<string> {
  return new Promise((resolve) => {
    const s = connect(socket);
    let got = "";
    const done = () => {
      clearTimeout(timer);
      s.destroy();
      resolve(got);
    };
    const timer = setTimeout(done, ms);
    s.on("data", (d) => (got += d.toString("latin1")));
    s.on("error", done);
    s.on("close", done);
    s.on("connect", () => {
      s.write(bytes);
      if (how === "end") s.end();
      else if (how === "drop") s.destroy();
    });
  });
}

test(`the server survives ${CASES} seeded garbage, truncated and mutated requests (seed ${SEED})`, { skip, timeout: 120_000 }, async () => {
  buildBareKernel(bareProgram("halt"));
  const host = await TestHost.start(dir);
  const r = rng(SEED);
  const halt = join(root, "build", "bare", "halt.Image");
  try {
    assert.equal((await host.api("POST", "/v1/vms", { name: "alive", kernel: halt, append: "", memBytes: 64 << 20 })).status, 201);
    assert.equal((await host.api("POST", "/v1/vms/alive/start")).status, 200);
    const valid = { name: "f", kernel: halt, append: "", memBytes: 64 << 20, cpus: 1, weight: 256, disks: [], command: ["true"] };
    const paths = ["/v1/host", "/v1/vms", "/v1/vms/alive", "/v1/vms/f", "/v1/vms/alive/stats", "/v1/vms/alive/logs", "/v1/vms/f/pause",
      "/v1/vms/f/stop", "/v1/vms/%2e%2e", "/v1/vms/%ZZ", "/v1/vms/" + "n".repeat(300), "//v1//vms", "/v1/vms?x=1", "*"];
    const methods = ["GET", "POST", "PATCH", "DELETE", "PUT", "HEAD", "OPTIONS", "G E T", ""];
    const statuses = new Map<string, number>();
    for (let i = 0; i < CASES; i++) {
      const kind = r.int(5);
      let bytes: Buffer;
      if (kind === 0) {
        bytes = r.bytes(1 + r.int(400)); // garbage
      } else {
        // A well-formed request with a mutated body.
        const body = JSON.parse(JSON.stringify(valid));
        for (let m = r.int(4); m > 0; m--) {
          const key = r.pick([...Object.keys(valid), "extra", "__proto__", "constructor"]);
          body[key] = r.pick([null, -1, 0, 2 ** 53, 1.5, "", "x".repeat(r.int(100)), [], [1, "a"], {}, true, `n${i}`, "a/b"]);
        }
        let text = r.int(4) === 0 ? JSON.stringify(body).slice(0, r.int(80)) : JSON.stringify(body);
        if (r.int(10) === 0) text = text.replace(/[{}"]/, "");
        const method = r.pick(methods.filter((m) => m !== "DELETE" || r.int(2) === 0));
        const path = r.pick(paths);
        const head = `${method} ${path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(text)}\r\n\r\n`;
        bytes = Buffer.from(head + text);
        // Truncated: cut anywhere, then close.
        if (kind === 2) bytes = bytes.subarray(0, r.int(bytes.length));
      }
      const how = kind === 3 ? "drop" : kind === 4 && r.int(4) === 0 ? "stall" : "end";
      const reply = await exchange(host.socket, bytes, how, how === "stall" ? 50 : 300);
      const status = /^HTTP\/1\.1 (\d{3})/.exec(reply)?.[1];
      if (status) statuses.set(status, (statuses.get(status) ?? 0) + 1);
      assert.notEqual(status, "500", `case ${i}: ${bytes.toString("latin1").slice(0, 200)}\n-> ${reply.slice(0, 300)}`);
    }
    assert.doesNotMatch(host.stderr, /internal error/);
    // The host and its VM go on.
    const alive = await host.api("GET", "/v1/vms/alive");
    assert.equal(alive.status, 200);
    assert.equal(alive.json.state, "running");
    assert.equal((await host.api("GET", "/v1/host")).status, 200);
    assert.ok(statuses.size >= 4, `a variety of answers: ${JSON.stringify([...statuses])}`);
  } finally {
    assert.equal(await host.stop(), 0);
  }
});
