// End to end, opt-in (minutes: it builds the Debian system image on first
// use): TSVISOR_E2E=1, or `npm run test:e2e`. Uses the cache tsvisor uses
// ($TSVISOR_CACHE, ...), so a second run finds the image built.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { bin, ok, tsvisor } from "../cli/test-tsvisor.js";
import { defaultCacheDir } from "./image-cache.js";
import { keptDiskPath } from "../cli/system-image.js";
import { TestHost } from "../api/test-host.js";

const skip = process.env.TSVISOR_E2E === "1" ? false : "opt-in: TSVISOR_E2E=1 (npm run test:e2e)";
const RUN = ["run", "--image", "debian", "--cpus", "2", "--mem", "1G"];

test("Debian on a disk: pull, run a command, overlays thrown away or kept, poweroff from systemd", { skip, timeout: 3_600_000 }, async (t) => {
  await t.test("image pull debian", () => {
    const r = spawnSync(process.execPath, [bin, "image", "pull", "debian"], { encoding: "utf8", timeout: 3_000_000 });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^debian trixie riscv64, \d+ packages/);
    const again = spawnSync(process.execPath, [bin, "image", "pull", "debian"], { encoding: "utf8", timeout: 60_000 });
    assert.equal(again.status, 0, again.stderr);
    assert.match(again.stdout, /\(cached\)/);
  });

  await t.test("run --image debian -- cat /etc/debian_version", async () => {
    const out = ok(await tsvisor([...RUN, "--", "cat", "/etc/debian_version"]));
    assert.match(out, /^(13\.\d+|trixie\/sid)\n$/);
    const r = await tsvisor([...RUN, "--", "sh", "-c", "dpkg-query -W -f='${db:Status-Abbrev}\\n' | sort | uniq -c; exit 3"]);
    assert.equal(r.status, 3, r.stderr);
    assert.match(r.stdout, /^\s*\d+ ii \n$/, "every package installed and configured");
    assert.equal((await tsvisor([...RUN, "--", "no-such-command"])).status, 127);
    // The kernel's modules are on the disk (depmod'ed): nftables' module loads.
    assert.equal(ok(await tsvisor([...RUN, "--", "sh", "-c", "modprobe nf_tables && grep -o '^nf_tables ' /proc/modules"])), "nf_tables \n");
  });

  await t.test("fast start: a command restores a snapshot holding the disk mounted read-only, and writes to a new overlay of its own", async () => {
    // The runs above may have made the snapshot already; one more makes sure.
    ok(await tsvisor([...RUN, "--", "true"]));
    const r = await tsvisor([...RUN, "--stats", "--", "sh", "-c", "cat /etc/debian_version; echo x > /root/fast; findmnt -n -o SOURCE,OPTIONS /"]);
    assert.match(ok(r), /^(13\.\d+|trixie\/sid)\n\/dev\/vda rw,[^\n]*\n$/);
    assert.match(r.stderr, /fast start: restored /);
    assert.equal((await tsvisor([...RUN, "--", "test", "-e", "/root/fast"])).status, 1, "the restored run's writes went to its own overlay");
    const cold = await tsvisor([...RUN, "--no-snapshot", "--stats", "--", "cat", "/etc/debian_version"]);
    assert.match(ok(cold), /^(13\.\d+|trixie\/sid)\n$/);
    assert.doesNotMatch(cold.stderr, /fast start/);
  });

  await t.test("an overlay is thrown away after the run", async () => {
    ok(await tsvisor([...RUN, "--", "sh", "-c", "echo hello > /root/left-behind"]));
    const r = await tsvisor([...RUN, "--", "test", "-e", "/root/left-behind"]);
    assert.equal(r.status, 1, "a file written in one run is absent in the next");
  });

  const name = `e2e-${process.pid}`;
  const kept = keptDiskPath(defaultCacheDir(), name);
  try {
    await t.test("--disk-name keeps the disk", async () => {
      const first = await tsvisor([...RUN, "--disk-name", name, "--", "sh", "-c", "echo kept > /root/kept"]);
      ok(first);
      assert.match(first.stderr, new RegExp(`kept in ${kept.replace(/[.]/g, "\\.")}`));
      assert.ok(existsSync(kept));
      const again = await tsvisor([...RUN, "--disk-name", name, "--stats", "--", "cat", "/root/kept"]);
      assert.equal(ok(again), "kept\n");
      assert.doesNotMatch(again.stderr, /fast start/, "a kept disk, changed by earlier runs, boots cold");
    });

    await t.test("a project on a shared folder: git and a C build in the Debian system, the host sees both", async () => {
      // The tools come from Debian's archive through the user-mode network, into the kept disk (4 to 5 min here, 3 of them installing).
      ok(await tsvisor([...RUN, "--disk-name", name, "--", "sh", "-c",
        "apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends gcc libc6-dev make git >/dev/null"], "", {}, 900_000));
      const src = mkdtempSync(join(tmpdir(), "tsvisor-e2e-src-"));
      try {
        writeFileSync(join(src, "main.c"), '#include <stdio.h>\nint add(int, int);\nint main(void) { printf("sum %d\\n", add(40, 2)); return 0; }\n');
        writeFileSync(join(src, "add.c"), "int add(int a, int b) { return a + b; }\n");
        writeFileSync(join(src, "Makefile"), "prog: main.o add.o\n\tgcc -o prog main.o add.o\n%.o: %.c\n\tgcc -O2 -c $<\n");
        const out = ok(await tsvisor([...RUN, "--disk-name", name, "--share", `${src}:/src`, "--", "sh", "-c",
          "cd /src && git init -q && git add . && git -c user.email=e2e@tsvisor -c user.name=e2e commit -qm init && make -s && ./prog"]));
        assert.equal(out, "sum 42\n");
        const log = spawnSync("git", ["-C", src, "log", "--format=%s"], { encoding: "utf8" });
        assert.equal(log.stdout, "init\n", "the commit made in the guest is the host's");
        assert.equal(spawnSync("git", ["-C", src, "fsck", "--strict"], { encoding: "utf8" }).status, 0);
        assert.ok(existsSync(join(src, "prog")), "the guest's build output is on the host");
      } finally {
        rmSync(src, { recursive: true, force: true });
      }
    });

    await t.test("systemd boots to a root shell on the console; poweroff ends tsvisor cleanly with the disk flushed", async () => {
      const child = spawn(process.execPath, [bin, ...RUN, "--disk-name", name, "--timeout", "900"], { stdio: ["pipe", "pipe", "pipe"] });
      let out = "";
      let typed = false;
      child.stdout.on("data", (b: Buffer) => {
        out += b.toString();
        if (!typed && /root@debian:~#/.test(out)) {
          typed = true;
          child.stdin.write("echo from-systemd > /root/sd; systemctl poweroff\n");
        }
      });
      let err = "";
      child.stderr.on("data", (b: Buffer) => (err += b.toString()));
      const status = await new Promise<number | null>((resolve) => child.on("close", resolve));
      assert.ok(typed, `no root prompt; output:\n${out.slice(-2000)}\n${err}`);
      assert.equal(status, 0, `status ${status}\n${out.slice(-2000)}\n${err}`);
      assert.equal(ok(await tsvisor([...RUN, "--disk-name", name, "--", "cat", "/root/sd"])), "from-systemd\n");
      const check = spawnSync(process.execPath, [bin, "disk", "check", kept], { encoding: "utf8" });
      assert.equal(check.status, 0, check.stdout + check.stderr);
    });
  } finally {
    rmSync(kept, { force: true });
    rmSync(`${kept}.base`, { force: true });
  }

  await t.test("a daemon VM with --image debian: systemd runs, vm exec works in the system, its root disk keeps a file across stop and start", async () => {
    const dir = mkdtempSync(join(tmpdir(), "tsvisor-e2e-daemon-"));
    const host = await TestHost.start(dir, ["--pcpus", "2", "--mem", "2G"]);
    const exec = async (...cmd: string[]) => host.vm("exec", "deb", "--", ...cmd);
    /** Retries `vm exec` until the agent answers (it starts with init, before systemd). */
    const execWhenUp = async (...cmd: string[]) => {
      const deadline = Date.now() + 600_000;
      for (;;) {
        const r = await exec(...cmd);
        if (r.status === 0 || Date.now() > deadline) return r;
        await new Promise((r) => setTimeout(r, 2000));
      }
    };
    try {
      const made = await host.vm("create", "deb", "--image", "debian", "--cpus", "2", "--mem", "1G", "--start");
      assert.equal(made.status, 0, made.stderr);
      assert.equal(ok(await execWhenUp("cat", "/etc/debian_version")).trim().split(".")[0], "13");
      // "offline" until switch_root (the agent starts in init, before systemd), then "initializing", "starting".
      const state = await execWhenUp("sh", "-c", "n=0; until s=$(systemctl is-system-running); [ $s = running ] || [ $s = degraded ] || [ $n = 600 ]; do sleep 1; n=$((n+1)); done; echo $s");
      assert.match(ok(state), /^(running|degraded)\n$/);
      ok(await exec("sh", "-c", "echo kept > /root/kept; sync"));
      assert.equal((await host.vm("stop", "deb")).status, 0);
      assert.equal((await host.vm("start", "deb")).status, 0);
      assert.equal(ok(await execWhenUp("cat", "/root/kept")), "kept\n");
      assert.equal((await host.vm("stop", "deb")).status, 0);
      assert.equal((await host.vm("rm", "deb")).status, 0);
      assert.ok(!existsSync(join(dir, "state", "disks", "deb-debian.qcow2")), "vm rm removed its root disk");
    } finally {
      assert.equal(await host.stop(), 0);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
