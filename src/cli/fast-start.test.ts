// Fast start (fast-start.ts): `tsvisor run -- CMD` restores a snapshot of
// the stock guest waiting for a command. The Debian tests use --mem 320M,
// which no other test uses, so they start without a snapshot of their own
// and leave none behind.
import { createHash, randomBytes } from "node:crypto";
import { test, before } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { defaultCacheDir } from "../images/image-cache.js";
import { debianImageDir } from "../images/debian.js";
import { DEFAULT_CMDLINE } from "./run-linux.js";
import { MarkerFilter, WAIT_MARKER, commandMessage, imageIdentity, pruneSnapshots, snapshotKey, snapshotPath, workingSetPath } from "./fast-start.js";
import { spawn, spawnSync } from "node:child_process";
import { bin, tsvisor, pullImage } from "./test-tsvisor.js";

test("the wait marker is taken out of the console output, also when split across chunks", () => {
  for (const cut of [0, 1, 5, WAIT_MARKER.length - 1, WAIT_MARKER.length]) {
    let out = "";
    let seen = 0;
    const f = new MarkerFilter((b) => (out += Buffer.from(b).toString("latin1")), () => seen++);
    const text = `boot\x1b[0m${WAIT_MARKER}after`;
    const at = "boot\x1b[0m".length + cut;
    f.write(Buffer.from(text.slice(0, at), "latin1"));
    f.write(Buffer.from(text.slice(at), "latin1"));
    assert.equal(out, "boot\x1b[0mafter");
    assert.equal(seen, 1);
  }
});

test("the command message: the seed's line (time, random bytes), then blocks (fragment, stdin) with nothing a tty line discipline acts on", () => {
  const decode = (msg: string): { seed: string; blocks: string[] } => {
    assert.match(msg, /^[\x20-\x7e\n]*$/);
    const [seed, ...lines] = msg.split("\n").slice(0, -1);
    const blocks: string[] = [];
    for (let i = 0; i < lines.length; ) {
      const [kind, count] = lines[i].split(" ");
      const body = lines.slice(i + 1, i + 1 + Number(count));
      blocks.push(kind === "p" ? body.map((l) => `${l}\n`).join("") : Buffer.from(body.join(""), "base64").toString("latin1"));
      i += 1 + Number(count);
    }
    return { seed, blocks };
  };
  const message = Buffer.from(commandMessage(["sh", "-c", "echo it's"], Buffer.from([0, 3, 4, 0x13, 0xff]), 1_700_000_000_000)).toString("latin1");
  const { seed, blocks } = decode(message);
  const [time, random] = seed.split(" ");
  assert.equal(time, "#1700000000");
  assert.equal(Buffer.from(random, "base64").length, 32);
  assert.match(message, /^[^\n]*\np 2\n/, "printable: a plain block, read by shell builtins");
  assert.equal(blocks.length, 2);
  assert.equal(blocks[0], `set -- 'sh' '-c' 'echo it'\\''s'\ntsvisor_block > /tsvisor/stdin\n`);
  assert.deepEqual([...Buffer.from(blocks[1], "latin1")], [0, 3, 4, 0x13, 0xff]);
  // Control characters in the command: base64.
  const ctl = Buffer.from(commandMessage(["printf", "\x03\x7f"], undefined)).toString("latin1");
  assert.match(ctl, /^[^\n]*\nb \d+\n/);
  assert.match(decode(ctl).blocks[0], /set -- 'printf' '\x03\x7f'\n/);
  // An empty stdin is made by the fragment; no stdin: none; a fresh seed each time.
  const empty = decode(Buffer.from(commandMessage(["true"], new Uint8Array(0))).toString()).blocks;
  assert.equal(empty.length, 1);
  assert.match(empty[0], /\n: > \/tsvisor\/stdin\n$/);
  assert.doesNotMatch(decode(Buffer.from(commandMessage(["true"], undefined)).toString()).blocks[0], /stdin/);
  assert.notEqual(Buffer.from(commandMessage(["true"], undefined)).toString(), Buffer.from(commandMessage(["true"], undefined)).toString());
  // Shares are mounted by the fragment, before the command (the snapshot holds none mounted).
  const shares = [{ tag: "share0", guestDir: "/mnt/a" }, { tag: "share1", guestDir: "/b" }];
  const mountsOf = (fragment: string) => fragment.split("\n").filter((l) => l.startsWith("mkdir -p ")).map((l) => l.split(" && ")[1].split(" || ")[0]).join("; ");
  const shared = decode(Buffer.from(commandMessage(["ls"], undefined, 0, { shares })).toString()).blocks[0];
  assert.equal(mountsOf(shared), "mount -t virtiofs share0 '/mnt/a'; mount -t virtiofs share1 '/b'");
  assert.match(shared, /\nset -- 'ls'\n$/);
  assert.doesNotMatch(shared, /newroot/);
  // run --image: the system disk, mounted read-only at the snapshot, is remounted read-write first, the shares go inside it, then init runs the command chrooted there.
  const system = decode(Buffer.from(commandMessage(["ls"], undefined, 0, { systemDisk: true, shares })).toString()).blocks[0];
  assert.match(system, /^mount -o remount,rw \/newroot \|\| \{ [^\n]*finish 1; \}\nmkdir -p /);
  assert.equal(mountsOf(system), "mount -t virtiofs share0 '/newroot/mnt/a'; mount -t virtiofs share1 '/newroot/b'");
  assert.match(system, /\nset -- 'ls'\n$/);
});

test("a new snapshot prunes those of other generations (tsvisor, init, image) and their working sets, not other shapes of its own", () => {
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-snapshots-"));
  try {
    const shape = { cmdline: "c", cpus: 1, memBytes: 1 << 29, console: "ttyS0", nets: ["user"], balloon: true };
    const key = snapshotKey("image-a", shape);
    const sibling = snapshotKey("image-a", { ...shape, cpus: 2 });
    const old = snapshotKey("image-b", shape);
    assert.equal(key.split("-")[0], sibling.split("-")[0]);
    assert.notEqual(key, sibling);
    assert.notEqual(key.split("-")[0], old.split("-")[0]);
    for (const k of [key, sibling, old, "0123abcd"]) {
      writeFileSync(join(dir, `${k}.snap`), "");
      writeFileSync(workingSetPath(join(dir, `${k}.snap`)), "");
    }
    writeFileSync(join(dir, "other.txt"), "");
    pruneSnapshots(dir, key);
    const kept = [`${key}.snap`, `${key}.pages`, `${sibling}.snap`, `${sibling}.pages`, "other.txt"];
    assert.deepEqual(readdirSync(dir).sort(), [...kept].sort());

    // run --image: a snapshot on a new build of the system disk's base (image pull --force) prunes those on the old one, not the others.
    const onOld = snapshotKey("image-a", { ...shape, system: "build-1" });
    const onNew = snapshotKey("image-a", { ...shape, system: "build-2" });
    const onNewSibling = snapshotKey("image-a", { ...shape, system: "build-2", cpus: 2 });
    assert.equal(onOld.split("-")[0], key.split("-")[0]);
    for (const k of [onOld, onNew, onNewSibling]) writeFileSync(join(dir, `${k}.snap`), "");
    pruneSnapshots(dir, onNew);
    assert.deepEqual(readdirSync(dir).sort(), [...kept, `${onNew}.snap`, `${onNewSibling}.snap`].sort());
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

const MEM = "320M";
function thisSnapshot(): string {
  const identity = imageIdentity(debianImageDir(defaultCacheDir()));
  assert.ok(identity, "the image is pulled");
  // run -- CMD: the command on virtio-console (the default for a command).
  const shape = { cmdline: `${DEFAULT_CMDLINE} tsvisor.console=hvc0 tsvisor.dhcp=eth0`, cpus: 1, memBytes: 320 << 20, console: "hvc0", nets: ["user"], balloon: true };
  return snapshotPath(defaultCacheDir(), snapshotKey(identity, shape));
}

before(pullImage);

test("the first run makes the snapshot, later ones restore it (status, output, stdin), --no-snapshot boots cold, a broken snapshot is replaced with a note", async () => {
  const path = thisSnapshot();
  rmSync(path, { force: true });
  try {
    const first = await tsvisor(["run", "--mem", MEM, "--stats", "--", "echo", "hi"]);
    assert.equal(first.status, 0, first.stderr);
    assert.equal(first.stdout, "hi\n");
    assert.match(first.stderr, /fast start: booted; snapshot .* written/);
    assert.ok(existsSync(path), `${path} made`);

    const second = await tsvisor(["run", "--mem", MEM, "--stats", "--", "sh", "-c", "read a; echo got $a; exit 3"], "piped\n");
    assert.equal(second.status, 3, second.stderr);
    assert.equal(second.stdout, "got piped\n");
    assert.match(second.stderr, /fast start: restored /);
    // The first restored run kept the pages it read, for later runs to read ahead.
    assert.equal(readFileSync(workingSetPath(path)).subarray(0, 8).toString(), "TSVPAGE1");

    // A larger stdin travels over virtio-console too (the default console of a command).
    const big = randomBytes(100_000);
    const piped = await tsvisor(["run", "--mem", MEM, "--stats", "--", "md5sum"], big);
    assert.equal(piped.status, 0, piped.stderr);
    assert.equal(piped.stdout, `${createHash("md5").update(big).digest("hex")}  -\n`);
    assert.match(piped.stderr, /fast start: restored /);

    // Under a terminal the restored command's console has the terminal's size
    // (script(1) gives the run a pseudo-terminal of 101x37).
    const sized = spawnSync("script", ["-qec", `stty cols 101 rows 37; ${process.execPath} ${bin} run --mem ${MEM} -- sh -c 'stty size'`, "/dev/null"], { encoding: "utf8", timeout: 120_000 });
    assert.equal(sized.status, 0, sized.stderr);
    assert.match(sized.stdout, /^37 101\r?$/m);

    // Each restored guest has its own random numbers (fresh seed and a CRNG reseed).
    const rand = await Promise.all([0, 1].map(() => tsvisor(["run", "--mem", MEM, "--", "sh", "-c", "head -c 16 /dev/urandom | od -An -tx1"])));
    assert.equal(rand[0].status, 0, rand[0].stderr);
    assert.notEqual(rand[0].stdout, rand[1].stdout);

    const cold = await tsvisor(["run", "--mem", MEM, "--no-snapshot", "--stats", "--", "echo", "cold"]);
    assert.equal(cold.status, 0, cold.stderr);
    assert.equal(cold.stdout, "cold\n");
    assert.doesNotMatch(cold.stderr, /fast start/);

    writeFileSync(path, "not a snapshot");
    const broken = await tsvisor(["run", "--mem", MEM, "--stats", "--", "echo", "again"]);
    assert.equal(broken.status, 0, broken.stderr);
    assert.equal(broken.stdout, "again\n");
    assert.match(broken.stderr, /^tsvisor: the fast-start snapshot .* does not restore \(.*\); removed, booting cold$/m);
    assert.match(broken.stderr, /fast start: booted; snapshot .* written/);
    const after = await tsvisor(["run", "--mem", MEM, "--stats", "--", "true"]);
    assert.equal(after.status, 0, after.stderr);
    assert.match(after.stderr, /fast start: restored /);

    // A working set that is not one is only a lost hint: the run goes on and keeps a new one.
    writeFileSync(workingSetPath(path), "garbage");
    const hinted = await tsvisor(["run", "--mem", MEM, "--", "echo", "ok"]);
    assert.equal(hinted.status, 0, hinted.stderr);
    assert.equal(hinted.stdout, "ok\n");
    assert.equal(readFileSync(workingSetPath(path)).subarray(0, 8).toString(), "TSVPAGE1");
  } finally {
    rmSync(path, { force: true });
    rmSync(workingSetPath(path), { force: true });
  }
});

test("the restored guest's agent: the shell's own builtins do not see it, a command that kills it still gets its status out", async () => {
  const path = thisSnapshot();
  try {
    const made = await tsvisor(["run", "--mem", MEM, "--", "true"]);
    assert.equal(made.status, 0, made.stderr);
    // `wait` and `jobs` run by init's shell itself: the agent is no job of it.
    const wait = await tsvisor(["run", "--mem", MEM, "--", "wait"], "", {}, 60_000);
    assert.equal(wait.status, 0, wait.stderr);
    const jobs = await tsvisor(["run", "--mem", MEM, "--", "jobs"]);
    assert.equal(jobs.status, 0, jobs.stderr);
    assert.equal(jobs.stdout, "");
    // Without the agent the finisher program reports the status (a second later).
    const killed = await tsvisor(["run", "--mem", MEM, "--stats", "--", "sh", "-c", "killall -9 agent && echo gone; exit 5"]);
    assert.equal(killed.status, 5, killed.stderr);
    assert.equal(killed.stdout, "gone\n");
    assert.match(killed.stderr, /fast start: restored /);
  } finally {
    rmSync(path, { force: true });
    rmSync(workingSetPath(path), { force: true });
  }
});

test("a reader that closes the output early ends the run quietly with status 141, as SIGPIPE would", async () => {
  const child = spawn(process.execPath, [bin, "run", "--mem", MEM, "--", "sh", "-c", "while :; do echo line; done"], { stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  child.stdout.once("data", () => child.stdout.destroy());
  const status = await new Promise<number | null>((resolve) => child.on("close", resolve));
  assert.equal(status, 141, stderr);
  assert.equal(stderr, "");
});
