// `tsvisor vm exec` in a running daemon VM (a Debian guest with the shell on
// its console): through the guest agent over the VM's own vsock socket.
// stdout and stderr apart, stdin piped (also more than one frame), exit
// statuses, 127 for a command not found, -e and -w, -t (a pseudo-terminal
// that follows our size), sessions at the same time, and one line when the
// VM does not run.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { bin, noGuestAgent, pullImage, tsvisor, BOOT_TIMEOUT_MS, type Run } from "../cli/test-tsvisor.js";
import { TestHost } from "./test-host.js";
import { execInVm } from "./exec-client.js";

const skip = noGuestAgent;
const dir = mkdtempSync(join(tmpdir(), "tsvisor-exec-"));
after(() => rmSync(dir, { recursive: true, force: true }));
before(() => {
  if (!skip) pullImage();
});

test("vm exec: stdout and stderr apart, stdin piped, exit status, 127, concurrent sessions", { skip, timeout: BOOT_TIMEOUT_MS + 120_000 }, async () => {
  const host = await TestHost.start(dir);
  const exec = (stdin: string | Buffer, ...args: string[]): Promise<Run> => tsvisor(["vm", "exec", "a", "--host", host.socket, "--", ...args], stdin);
  try {
    const created = await host.vm("create", "a", "--mem", "256M", "--net", "user", "--start");
    assert.equal(created.status, 0, created.stderr);
    const info = JSON.parse((await host.vm("info", "a", "--json")).stdout);
    assert.equal(info.vsock.path, join(dir, "state", "vsock", "a.sock"));
    assert.equal(info.vsock.cid, 3);
    assert.match((await host.vm("info", "a")).stdout, /^vsock: +\S+\/a\.sock \(guest CID 3; vm exec goes through it\)$/m);
    // Until the guest has booted and its agent listens: 502, one line.
    for (let i = 0; ; i++) {
      const r = await exec("", "true");
      if (r.status === 0) break;
      assert.match(r.stderr, /^tsvisor: .*guest agent does not answer/);
      assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
      assert.ok(i < 150, `no agent:\n${r.stderr}\n${host.stderr}`);
      await new Promise((r) => setTimeout(r, 1000));
    }

    const r = await exec("", "sh", "-c", "echo out; echo err >&2; echo more; exit 3");
    assert.equal(r.status, 3, r.stderr);
    assert.equal(r.stdout, "out\nmore\n");
    assert.equal(r.stderr, "err\n");

    const uname = await exec("", "uname", "-m");
    assert.equal(uname.status, 0);
    assert.equal(uname.stdout, "riscv64\n");

    // stdin: a line, and 1 MiB (16 frames and more than the vsock credit window).
    const cat = await exec("hello, guest\n", "cat");
    assert.equal(cat.status, 0, cat.stderr);
    assert.equal(cat.stdout, "hello, guest\n");
    const big = Buffer.alloc(1 << 20);
    for (let i = 0; i < big.length; i++) big[i] = (i * 131 + (i >> 10)) & 0xff;
    const sum = await exec(big, "sha256sum");
    assert.equal(sum.status, 0, sum.stderr);
    assert.equal(sum.stdout.split(" ")[0], createHash("sha256").update(big).digest("hex"));
    // and 1 MiB back out
    const out = await exec("", "sh", "-c", "head -c 1048576 /dev/zero | tr '\\0' x");
    assert.equal(out.status, 0, out.stderr);
    assert.equal(out.stdout, "x".repeat(1 << 20));

    const missing = await exec("", "no-such-command", "arg");
    assert.equal(missing.status, 127);
    assert.match(missing.stderr, /no-such-command: not found/);
    const notExec = await exec("", "/etc/filesystems"); // a file, not executable
    assert.equal(notExec.status, 126, notExec.stderr);
    const killed = await exec("", "sh", "-c", "kill -9 $$");
    assert.equal(killed.status, 128 + 9);

    // Without "--": the command starts after the name.
    const noDashes = await tsvisor(["vm", "exec", "--host", host.socket, "a", "echo", "-n", "x"]);
    assert.equal(noDashes.status, 0, noDashes.stderr);
    assert.equal(noDashes.stdout, "x");

    // -e and -w: the environment and the directory it starts in, as docker exec's.
    const envCwd = await tsvisor(["vm", "exec", "a", "--host", host.socket, "-e", "GREETING=hello world", "--env=EMPTY=", "-w", "/tmp", "--", "sh", "-c", 'echo "$GREETING|${EMPTY-unset}|$(pwd)|$HOME"']);
    assert.equal(envCwd.status, 0, envCwd.stderr);
    assert.equal(envCwd.stdout, "hello world||/tmp|/root\n");
    const noDashesOpts = await tsvisor(["vm", "exec", "-w", "/etc", "a", "--host", host.socket, "-e", "X=1", "sh", "-c", "echo $X $(pwd)"]);
    assert.equal(noDashesOpts.stdout, "1 /etc\n", noDashesOpts.stderr);
    assert.equal((await exec("", "pwd")).stdout, "/root\n", "without -w: /root");
    const noDir = await tsvisor(["vm", "exec", "a", "--host", host.socket, "-w", "/no/such/dir", "--", "true"]);
    assert.equal(noDir.status, 126);
    assert.match(noDir.stderr, /cannot start in \/no\/such\/dir: No such file or directory/);
    for (const bad of [["-w", "relative"], ["-e", "NOEQUALS"], ["-e", "=x"]]) {
      const r = await tsvisor(["vm", "exec", "a", "--host", host.socket, ...bad, "--", "true"]);
      assert.equal(r.status, 2, `${bad.join(" ")}: ${r.stderr}`);
      assert.match(r.stderr, /^tsvisor: vm exec: .*(absolute|NAME=VALUE)/);
      assert.equal(r.stderr.trim().split("\n").length, 1);
    }

    // -t: a pseudo-terminal (24x80 when ours is none; its output has the terminal's CRLF).
    const tty = await tsvisor(["vm", "exec", "-t", "a", "--host", host.socket, "--", "sh", "-c", "tty; stty size; echo $TERM; exit 5"]);
    assert.equal(tty.status, 5, tty.stderr);
    assert.equal(tty.stdout.replace(/\/dev\/pts\/\d+/, "PTS"), `PTS\r\n24 80\r\n${process.env.TERM || "xterm"}\r\n`, "TERM is ours (xterm without one)");
    const ownTerm = await tsvisor(["vm", "exec", "-t", "-e", "TERM=vt100", "a", "--host", host.socket, "--", "sh", "-c", "echo $TERM"]);
    assert.equal(ownTerm.stdout, "vt100\r\n", ownTerm.stderr);
    // Typed input reaches an interactive shell on it (echoed by the terminal); it ends when the shell does.
    const typed = await tsvisor(["vm", "exec", "-it", "a", "--host", host.socket, "sh"], "echo from-the-$((6*7))-tty\nexit 4\n");
    assert.equal(typed.status, 4, typed.stderr);
    assert.match(typed.stdout, /from-the-42-tty\r\n/);
    const line = await tsvisor(["vm", "exec", "-t", "a", "--host", host.socket, "--", "sh", "-c", "read x; echo got $x"], "abc\n");
    assert.equal(line.status, 0, line.stderr);
    assert.match(line.stdout, /got abc\r\n$/);
    // Our terminal's size, and its changes, reach the command's.
    const { PassThrough } = await import("node:stream");
    const term = Object.assign(new PassThrough(), { isTTY: true, rows: 40, columns: 100 });
    let seen = "";
    term.on("data", (d: Buffer) => (seen += d.toString()));
    const stdin = new PassThrough();
    const resized = execInVm(host.socket, "a", ["sh", "-c", "stty size; read x; stty size"], { stdin, stdout: term, stderr: new PassThrough() }, { tty: true });
    for (let i = 0; !seen.includes("40 100"); i++) {
      assert.ok(i < 100, `no first size: ${JSON.stringify(seen)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    Object.assign(term, { rows: 50, columns: 160 });
    term.emit("resize");
    await new Promise((r) => setTimeout(r, 200));
    stdin.end("go\n");
    assert.equal(await resized, 0);
    assert.match(seen, /40 100\r\n[^]*50 160\r\n/);

    // Two sessions at once: the quick one ends while the slow one runs.
    const slow = exec("", "sh", "-c", "sleep 2; echo slow");
    const quick = await exec("", "echo", "quick");
    assert.equal(quick.stdout, "quick\n");
    const s = await slow;
    assert.equal(s.status, 0, s.stderr);
    assert.equal(s.stdout, "slow\n");

    // A snapshot restored as another VM: its vsock device sends TRANSPORT_RESET,
    // the agent's listening socket stays, and exec works in both.
    // A session is open when the snapshot is taken: in the copy the guest's
    // socket is reset (TRANSPORT_RESET), so its agent session ends and kills
    // the command; in the original it runs on.
    const inFlight = exec("", "sleep", "300");
    for (let i = 0; ; i++) {
      if ((await exec("", "ps")).stdout.includes("sleep 300")) break;
      assert.ok(i < 50, "the sleep never started");
    }
    const guestMac = async (vm: string) => (await tsvisor(["vm", "exec", vm, "--host", host.socket, "--", "cat", "/sys/class/net/eth0/address"])).stdout.trim();
    const macA = await guestMac("a");
    assert.match(macA, /^52:54:00(:[0-9a-f]{2}){3}$/);
    const snap = join(dir, "a.snap");
    const taken = await host.vm("snapshot", "a", snap);
    assert.equal(taken.status, 0, taken.stderr);
    const restored = await host.vm("restore", snap, "--name", "b");
    assert.equal(restored.status, 0, restored.stderr);
    for (let i = 0; ; i++) {
      const ps = await tsvisor(["vm", "exec", "b", "--host", host.socket, "--", "ps"]);
      assert.equal(ps.status, 0, `${ps.stderr}\n${host.stderr}`);
      if (!ps.stdout.includes("sleep 300")) break;
      assert.ok(i < 50, `the copy's session survived the restore:\n${ps.stdout}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const inB = await tsvisor(["vm", "exec", "b", "--host", host.socket, "--", "sh", "-c", "echo b; cat"], "via b\n");
    assert.equal(inB.status, 0, `${inB.stderr}\n${host.stderr}`);
    assert.equal(inB.stdout, "b\nvia b\n");
    // b is a clone (another name than the snapshot's VM): its card has a MAC
    // address of its own, which its guest took before the restore returned.
    const macOf = async (vm: string) => /mac=([0-9a-f:]{17})/.exec(JSON.parse((await host.vm("info", vm, "--json")).stdout).config.nets[0])?.[1];
    const macB = await macOf("b");
    assert.ok(macB && macA !== macB, `${macA} ${macB}`);
    assert.equal(await guestMac("b"), macB);
    assert.equal(await guestMac("a"), macA, "the original keeps its own");
    assert.match(host.stderr, new RegExp(`its guest took its new MAC addresses \\(${macA} -> ${macB}\\)`));
    // A clone restored paused takes its address when resumed.
    assert.equal((await host.vm("restore", snap, "--name", "c", "--paused")).status, 0);
    assert.equal(await macOf("c") !== macA, true);
    assert.equal((await host.vm("resume", "c")).status, 0);
    for (let i = 0; (await guestMac("c")) !== (await macOf("c")); i++) {
      assert.ok(i < 50, `c's guest never took its address:\n${host.stderr}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.equal((await host.vm("stop", "c")).status, 0);
    // In the original the session is alive: its command ends by a signal from another session.
    assert.equal((await exec("", "killall", "sleep")).status, 0);
    const original = await inFlight;
    assert.equal(original.status, 128 + 15, original.stderr);
    assert.equal((await exec("", "echo", "a again")).stdout, "a again\n");
    assert.equal((await host.vm("stop", "b")).status, 0);

    // A client that goes away: its command is killed.
    const gone = spawn(process.execPath, [bin, "vm", "exec", "a", "--host", host.socket, "--", "sleep", "301"], { stdio: "ignore" });
    for (let i = 0; ; i++) {
      if ((await exec("", "ps")).stdout.includes("sleep 301")) break;
      assert.ok(i < 50, "the sleep never started");
    }
    gone.kill("SIGKILL");
    for (let i = 0; ; i++) {
      if (!(await exec("", "ps")).stdout.includes("sleep 301")) break;
      assert.ok(i < 50, "the command outlived its client");
      await new Promise((r) => setTimeout(r, 100));
    }

    // vm create --vsock: none, or a socket of one's own (a relative path made absolute).
    assert.equal((await host.vm("create", "n", "--vsock", "none")).status, 0);
    const n = JSON.parse((await host.vm("info", "n", "--json")).stdout);
    assert.equal(n.config.vsock, "none");
    assert.equal(n.vsock, undefined);
    const own = await tsvisor(["vm", "create", "o", "--vsock", "o.sock,cid=7", "--host", host.socket]);
    assert.equal(own.status, 0, own.stderr);
    const o = JSON.parse((await host.vm("info", "o", "--json")).stdout);
    assert.deepEqual(o.vsock, { path: join(process.cwd(), "o.sock"), cid: 7 });
    const badCid = await host.vm("create", "p", "--vsock", "/tmp/p.sock,cid=2");
    assert.notEqual(badCid.status, 0);
    assert.match(badCid.stderr, /cid=2: expected 3\.\.4294967294/);

    // A VM that does not run: one line.
    assert.equal((await host.vm("stop", "a")).status, 0);
    const stopped = await exec("", "true");
    assert.notEqual(stopped.status, 0);
    assert.match(stopped.stderr, /^tsvisor: VM 'a' is stopped: exec needs it running\n$/);
  } finally {
    assert.equal(await host.stop(), 0, host.stderr);
  }
});
