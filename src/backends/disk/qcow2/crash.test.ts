// Crash safety: a child process (crash-child.ts) writes, zeroes and discards
// at random in a qcow2 image and is SIGKILLed at a random moment, several
// rounds in a row on the same image. After every kill, `tsvisor disk check`
// and `qemu-img check` (when installed) must find no corruption (leaked
// clusters are allowed), and the image must read back everything the child
// had flushed: bytes no later operation touched are exactly as at the last
// flush, bytes a later operation touched hold either value.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { openDisk } from "../disk.js";
import { createQcow2 } from "./create.js";
import { checkQcow2, formatCheck } from "./check.js";
import { rng, tempDir, crashOps, haveQemuImg, type CrashOp } from "../testing.js";

const here = dirname(fileURLToPath(import.meta.url));
const childScript = join(here, "crash-child.js");
const tmp = tempDir("tsvisor-crash-");
after(() => tmp.remove());
const ROUNDS = 5;

interface ChildRun {
  lastStarted: number;
  lastFlushed: number;
}

/** Runs the child on `image` and kills it `killAfterMs` after it is ready. */
function runAndKill(image: string, seed: number, killAfterMs: number): Promise<ChildRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [childScript, image, String(seed)], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    let timer: NodeJS.Timeout | undefined;
    child.stdout.setEncoding("utf8").on("data", (s: string) => {
      out += s;
      if (!timer && out.startsWith("ready\n")) timer = setTimeout(() => child.kill("SIGKILL"), killAfterMs);
    });
    child.stderr.setEncoding("utf8").on("data", (s: string) => (err += s));
    child.on("exit", (_code, signal) => {
      clearTimeout(timer);
      if (signal !== "SIGKILL") return reject(new Error(`the child ended on its own: ${err || out.slice(-500)}`));
      let lastStarted = -1;
      let lastFlushed = -1;
      for (const line of out.split("\n")) {
        const m = /^([SF]) (\d+)$/.exec(line);
        if (m && m[1] === "S") lastStarted = Number(m[2]);
        if (m && m[1] === "F") lastFlushed = Number(m[2]);
      }
      resolve({ lastStarted, lastFlushed });
    });
  });
}

function apply(model: Uint8Array, op: CrashOp): void {
  if (op.kind === "write") model.set(op.data, op.offset);
  else if (op.kind === "zero" || op.kind === "discard") model.fill(0, op.offset, op.offset + op.length);
}

/** The byte an operation leaves at `i`, or undefined when it does not touch it. */
function valueAt(op: CrashOp, i: number): number | undefined {
  if (op.kind === "write") return i >= op.offset && i < op.offset + op.data.length ? op.data[i - op.offset] : undefined;
  if (op.kind === "zero" || op.kind === "discard") return i >= op.offset && i < op.offset + op.length ? 0 : undefined;
  return undefined;
}

function checks(image: string): void {
  // What `tsvisor disk check` runs (the command itself is tested in src/cli/disk.test.ts).
  const own = checkQcow2(image);
  assert.equal(own.corruptions, 0, `tsvisor disk check:\n${formatCheck(own)}`);
  if (haveQemuImg()) {
    const q = spawnSync("qemu-img", ["check", image], { encoding: "utf8" });
    assert.ok(q.status === 0 || q.status === 3, `qemu-img check: status ${q.status}\n${q.stdout}${q.stderr}`);
  }
}

async function crashRounds(image: string, model: Uint8Array, seed: number): Promise<void> {
  const r = rng(seed);
  for (let round = 0; round < ROUNDS; round++) {
    const opsSeed = seed * 100 + round;
    const run = await runAndKill(image, opsSeed, 20 + r.int(250));
    checks(image);
    // Replay the child's operations: up to the last flush into the model, the rest as candidates.
    const later: CrashOp[] = [];
    let i = 0;
    for (const op of crashOps(opsSeed, model.length)) {
      if (i > run.lastStarted) break;
      if (i <= run.lastFlushed) apply(model, op);
      else later.push(op);
      i++;
    }
    const d = openDisk(image, { readOnly: true });
    const actual = new Uint8Array(model.length);
    d.read(0, actual);
    d.close();
    for (let b = 0; b < model.length; b++) {
      if (actual[b] === model[b]) continue;
      if (!later.some((op) => valueAt(op, b) === actual[b])) {
        assert.fail(`round ${round}: byte ${b} is ${actual[b]}, flushed value ${model[b]} (ops ${run.lastFlushed} flushed, ${run.lastStarted} started)`);
      }
    }
    model.set(actual); // the next round starts from what survived
  }
}

test("SIGKILL at random moments never corrupts an image (512-byte clusters, refcount table growth)", { timeout: 120_000 }, async () => {
  const image = tmp.path("plain.qcow2");
  const size = 8 << 20;
  // 64-bit refcounts: one refcount table cluster covers only 2 MiB of file, so
  // the rounds allocate refcount blocks and move the refcount table, too.
  createQcow2(image, { size, clusterSize: 512, refcountOrder: 6 });
  await crashRounds(image, new Uint8Array(size), 1);
  assert.ok(readFileSync(image).readUInt32BE(56) > 1, "the refcount table grew");
});

test("SIGKILL at random moments never corrupts an overlay; the base stays intact", { timeout: 120_000 }, async () => {
  const size = 8 << 20;
  const base = rng(2).bytes(size);
  writeFileSync(tmp.path("base.raw"), base);
  const image = tmp.path("overlay.qcow2");
  createQcow2(image, { size, clusterSize: 4096, backingFile: "base.raw", backingFormat: "raw" });
  await crashRounds(image, Uint8Array.from(base), 2);
  const d = openDisk(tmp.path("base.raw"), { format: "raw", readOnly: true });
  const now = new Uint8Array(size);
  d.read(0, now);
  d.close();
  assert.deepEqual(now, base);
});
