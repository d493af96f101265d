// virtio-vsock with a real Linux guest: `tsvisor run --vsock PATH -- prog`
// where prog (testing/vsock-guest.c, static riscv64, given as the command's
// stdin) talks AF_VSOCK both ways through the Firecracker-style Unix sockets:
// - guest -> host: it connects to CID 2 port 5200; the host listens on PATH_5200;
// - host -> guest: the host connects to PATH, writes "CONNECT 5201\n", gets
//   "OK <port>\n" once the guest accepted;
// each way 4 MiB each direction (16 times the 256 KiB credit window), checked
// byte for byte on both sides. And `run --vsock -- CMD` with fast start: the
// guest agent answers through PATH in a booted and in a restored guest.
import { test, before } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import net from "node:net";
import { join } from "node:path";
import { pullImage, bin, root, BOOT_TIMEOUT_MS } from "../../../cli/test-tsvisor.js";
import { execFrame, frame, FrameReader, FRAME_DATA, FRAME_EOF, FRAME_EXIT } from "../../../images/agent-protocol.js";

const CC = "riscv64-linux-gnu-gcc";
const SRC = join(root, "src", "devices", "virtio", "vsock", "testing", "vsock-guest.c");
const OUT = join(root, "build", "guest", "vsock-guest");
const BYTES = 4 << 20;
const HOST_PORT = 5200;
const GUEST_PORT = 5201;

const haveCompiler = spawnSync(CC, ["--version"], { stdio: "ignore" }).status === 0;
const noCompiler = !haveCompiler && `${CC} not installed (npm test installs gcc-riscv64-linux-gnu and libc6-dev-riscv64-cross)`;

before(() => {
  if (haveCompiler) pullImage();
});

const mtime = (path: string) => (existsSync(path) ? statSync(path).mtimeMs : 0);

export function buildVsockGuest(): string {
  if (mtime(OUT) > mtime(SRC)) return OUT;
  mkdirSync(join(root, "build", "guest"), { recursive: true });
  const tmp = `${OUT}.${process.pid}.tmp`;
  const r = spawnSync(CC, ["-static", "-O2", "-Wall", "-Wextra", "-o", tmp, SRC], { encoding: "utf8" });
  assert.equal(r.status, 0, `building ${SRC} failed:\n${r.stderr}`);
  renameSync(tmp, OUT);
  return OUT;
}

function pattern(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 7 + seed * 13 + (i >>> 12)) & 0xff;
  return b;
}

/** The first byte where `got` differs from `want`, or their lengths. */
function same(got: Buffer, want: Buffer, what: string): void {
  if (got.equals(want)) return;
  let i = 0;
  while (i < Math.min(got.length, want.length) && got[i] === want[i]) i++;
  assert.fail(`${what}: ${got.length} bytes, expected ${want.length}; first difference at byte ${i}`);
}

test("vsock with a Linux guest: both directions, 4 MiB each way, byte-exact", { skip: noCompiler, timeout: BOOT_TIMEOUT_MS + 300_000 }, async () => {
  const program = readFileSync(buildVsockGuest());
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-vsock-"));
  const path = join(dir, "v.sock");
  try {
    // Guest -> host: the guest's connect to port 5200 reaches PATH_5200.
    let fromGuest1: Buffer[] = [];
    const hostSide1 = new Promise<void>((resolve, reject) => {
      const server = net.createServer({ allowHalfOpen: true }, (s) => {
        s.on("data", (d) => fromGuest1.push(d));
        s.on("end", () => {
          try {
            same(Buffer.concat(fromGuest1), pattern(BYTES, 1), "guest -> host (guest connected)");
          } catch (e) {
            reject(e);
          }
          s.end(pattern(BYTES, 2));
          server.close();
          resolve();
        });
        s.on("error", reject);
      });
      server.listen(`${path}_${HOST_PORT}`);
    });

    const child = spawn(process.execPath, [bin, "run", "--mem", "256M", "--timeout", "400", "--vsock", path, "--",
      "sh", "-c", `cp /tsvisor/stdin /tmp/p && chmod +x /tmp/p && exec /tmp/p ${HOST_PORT} ${GUEST_PORT} ${BYTES}`], { stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    let hostSide2: Promise<void> | undefined;
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.stdout.on("data", (d: Buffer) => {
      stdout += d.toString();
      if (!hostSide2 && stdout.includes("vsock-guest: listening")) hostSide2 = connectToGuest(path);
    });
    child.stdin.end(program);
    const status = await new Promise<number | null>((resolve) => child.on("close", resolve));
    assert.equal(status, 0, `status ${status}\nstdout:\n${stdout}\nstderr:\n${stderr}`);
    assert.match(stdout, /vsock-guest: connect ok/);
    assert.match(stdout, /vsock-guest: ok/);
    await hostSide1;
    assert.ok(hostSide2, "the guest listened");
    await hostSide2;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** Host -> guest: CONNECT through PATH, OK, then 4 MiB each way and a closing "K". */
function connectToGuest(path: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = net.createConnection({ path, allowHalfOpen: true });
    let buf = Buffer.alloc(0);
    let ok = false;
    s.on("connect", () => s.write(`CONNECT ${GUEST_PORT}\n`));
    s.on("data", (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (!ok) {
        const nl = buf.indexOf(0x0a);
        if (nl < 0) return;
        const line = buf.subarray(0, nl).toString();
        if (!/^OK \d+$/.test(line)) return reject(new Error(`answer to CONNECT: ${JSON.stringify(line)}`));
        ok = true;
        buf = buf.subarray(nl + 1);
        s.write(pattern(BYTES, 3));
      }
    });
    s.on("end", () => {
      try {
        same(buf, pattern(BYTES, 4), "guest -> host (host connected)");
      } catch (e) {
        return reject(e);
      }
      s.end("K");
      resolve();
    });
    s.on("error", reject);
    s.on("close", () => (ok ? undefined : reject(new Error("closed before OK"))));
  });
}

/** Runs `echo hi` through the guest agent on vsock port 52, by the Unix socket PATH; undefined until it answers. */
function agentEcho(path: string): Promise<{ out: string; status: number } | undefined> {
  return new Promise((resolve) => {
    const s = net.createConnection(path);
    let buf = Buffer.alloc(0);
    let ok = false;
    const reader = new FrameReader();
    let out = "";
    s.on("error", () => resolve(undefined));
    s.on("close", () => resolve(undefined));
    s.on("connect", () => s.write("CONNECT 52\n"));
    s.on("data", (d: Buffer) => {
      if (!ok) {
        buf = Buffer.concat([buf, d]);
        const nl = buf.indexOf(0x0a);
        if (nl < 0) return;
        ok = true;
        d = buf.subarray(nl + 1);
        s.write(execFrame(["echo", "hi"]));
        s.write(frame(FRAME_EOF, 0));
      }
      for (const f of reader.push(d)) {
        if (f.type === FRAME_DATA) out += f.payload.toString();
        if (f.type === FRAME_EXIT) {
          s.destroy();
          resolve({ out, status: f.payload.readInt32LE(0) });
        }
      }
    });
  });
}

test("run --vsock starts fast too: booted (and snapshotted) or restored, the device answers", { skip: noCompiler, timeout: BOOT_TIMEOUT_MS + 120_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-vsock-fast-"));
  const path = join(dir, "v.sock");
  try {
    // The first run makes the fast-start snapshot (or finds it), the second restores it.
    for (const round of [1, 2]) {
      const child = spawn(process.execPath, [bin, "run", "--vsock", path, "--", "sh", "-c", "sleep 10; echo done"], { stdio: ["ignore", "pipe", "pipe"] });
      let stdout = "";
      let stderr = "";
      child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
      child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
      const closed = new Promise<number | null>((resolve) => child.on("close", resolve));
      let answer: { out: string; status: number } | undefined;
      for (let i = 0; i < 600 && !answer && child.exitCode === null; i++) {
        answer = await agentEcho(path);
        if (!answer) await new Promise((r) => setTimeout(r, 200));
      }
      const status = await closed;
      assert.equal(status, 0, `round ${round}: ${stderr}`);
      assert.equal(stdout, "done\n");
      assert.deepEqual(answer, { out: "hi\n", status: 0 }, `round ${round}: ${stderr}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
