// virtio-fs with Debian's own driver: `tsvisor run --share HOSTDIR:GUESTDIR`
// as a user runs it. The guest reads a host file, writes files the host then
// reads, changes names and attributes, and a tar of a tree made on the share
// extracts identically; a ,ro share refuses writes.
import { test, before } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { tsvisor, pullImage, ok, reported, oneErrorLine } from "../../../cli/test-tsvisor.js";

before(pullImage);

/** Every path under `dir` with its type, mode and content (or link target), and a file's mtime in seconds (what tar keeps). */
function tree(dir: string): string[] {
  return (fs.readdirSync(dir, { recursive: true, encoding: "utf8" }) as string[]).sort().map((p) => {
    const st = fs.lstatSync(join(dir, p));
    const what = st.isSymbolicLink() ? `-> ${fs.readlinkSync(join(dir, p))}` : st.isFile() ? fs.readFileSync(join(dir, p), "utf8") : "dir";
    return `${p} ${(st.mode & 0o170777).toString(8)} ${st.isFile() ? Math.floor(st.mtimeMs / 1000) : ""} ${what}`;
  });
}

test("a shared host folder in the Linux guest: read, write, mkdir/rename/unlink/symlink/chmod/touch, tar round trip", { timeout: 300_000 }, async () => {
  const dir = fs.mkdtempSync(join(tmpdir(), "tsvisor-share-"));
  fs.writeFileSync(join(dir, "from-host.txt"), "written on the host\n");
  fs.mkdirSync(join(dir, "old"));
  fs.writeFileSync(join(dir, "old/gone.txt"), "delete me");
  const script = [
    "cd /mnt/work",
    "echo host-says=$(cat from-host.txt)",
    "echo 'written in the guest' > from-guest.txt",
    "mkdir -p made/deeper && echo x > made/deeper/file",
    "mv made renamed",
    "rm old/gone.txt && rmdir old",
    "ln -s from-guest.txt link",
    "echo link-reads=$(cat link)",
    "chmod 640 from-guest.txt",
    "touch -d '2001-02-03 04:05:06' from-host.txt",
    "echo stat=$(stat -c %a from-guest.txt)",
    // A tree with files, empty files, a symlink and a subdirectory, made on the share...
    "mkdir -p t/a/b t/empty && for i in $(seq 1 50); do echo file $i > t/a/f$i; done && : > t/a/b/zero && ln -s ../a/f1 t/a/b/l && head -c 300000 /dev/urandom > t/big",
    // ...archived from the share and extracted onto it again.
    "tar cf /tmp/t.tar t && mkdir x && tar xf /tmp/t.tar -C x",
    "echo tar-diff=$(diff -r t x/t >/dev/null && echo same || echo differs)",
    "echo md5-big=$(md5sum < x/t/big | cut -d' ' -f1)",
    "ls -la > /dev/null && echo df=$(df -k /mnt/work | tail -1 | wc -w)",
  ].join(" && ");
  const r = await tsvisor(["run", "--share", `${dir}:/mnt/work`, "--", "sh", "-c", script]);
  const out = reported(ok(r));
  assert.equal(out["host-says"], "written on the host");
  assert.equal(out["link-reads"], "written in the guest");
  assert.equal(out.stat, "640");
  assert.equal(out["tar-diff"], "same");
  assert.equal(out.df, "6");
  assert.equal(fs.readFileSync(join(dir, "from-guest.txt"), "utf8"), "written in the guest\n");
  assert.equal(fs.statSync(join(dir, "from-guest.txt")).mode & 0o777, 0o640);
  assert.equal(fs.readFileSync(join(dir, "renamed/deeper/file"), "utf8"), "x\n");
  assert.ok(!fs.existsSync(join(dir, "made")) && !fs.existsSync(join(dir, "old")));
  assert.equal(fs.readlinkSync(join(dir, "link")), "from-guest.txt");
  assert.equal(fs.statSync(join(dir, "from-host.txt")).mtime.getUTCFullYear(), 2001);
  // The tar round trip, as the host sees it: the same names, types, modes and contents.
  const a = tree(join(dir, "t"));
  const b = tree(join(dir, "x/t"));
  assert.equal(a.length, 56);
  assert.deepEqual(b, a);
  const { createHash } = await import("node:crypto");
  assert.equal(out["md5-big"], createHash("md5").update(fs.readFileSync(join(dir, "t/big"))).digest("hex"));
});

test("a read-only share (,ro), booted cold (init mounts it, as for a shell or a daemon VM): writes fail with 'Read-only file system', reads work, the host folder is unchanged", { timeout: 300_000 }, async () => {
  const dir = fs.mkdtempSync(join(tmpdir(), "tsvisor-share-ro-"));
  fs.writeFileSync(join(dir, "keep.txt"), "read me\n");
  const r = await tsvisor(["run", "--no-snapshot", "--share", `${dir}:/mnt/ro,ro`, "--", "sh", "-c",
    "cat /mnt/ro/keep.txt; touch /mnt/ro/new 2>&1; echo more >> /mnt/ro/keep.txt 2>&1; rm /mnt/ro/keep.txt 2>&1; mkdir /mnt/ro/d 2>&1; true"]);
  const out = ok(r);
  assert.match(out, /^read me$/m);
  assert.equal(out.match(/Read-only file system/g)?.length, 4, out);
  assert.deepEqual(fs.readdirSync(dir), ["keep.txt"]);
  assert.equal(fs.readFileSync(join(dir, "keep.txt"), "utf8"), "read me\n");
});

test("fast start with a share: the snapshot is taken before the mount, so a later run restores it with another host folder and the guest mounts that one", { timeout: 300_000 }, async () => {
  const first = fs.mkdtempSync(join(tmpdir(), "tsvisor-share-fast-a-"));
  const second = fs.mkdtempSync(join(tmpdir(), "tsvisor-share-fast-b-"));
  fs.writeFileSync(join(first, "which"), "first\n");
  fs.writeFileSync(join(second, "which"), "second\n");
  // The first run may make the snapshot (or restore one an earlier test made).
  const a = await tsvisor(["run", "--stats", "--share", `${first}:/mnt/s`, "--", "sh", "-c", "cat /mnt/s/which; echo a > /mnt/s/out"]);
  assert.match(ok(a), /^first$/m);
  assert.match(a.stderr, /fast start: (booted|restored)/);
  const b = await tsvisor(["run", "--stats", "--share", `${second}:/mnt/s`, "--", "sh", "-c", "cat /mnt/s/which; echo b > /mnt/s/out"]);
  assert.match(ok(b), /^second$/m);
  assert.match(b.stderr, /fast start: restored /);
  assert.equal(fs.readFileSync(join(first, "out"), "utf8"), "a\n");
  assert.equal(fs.readFileSync(join(second, "out"), "utf8"), "b\n");
});

test("a file the guest holds open reads what the host wrote to it meanwhile (the guest drops its cached pages when the file's mtime changes)", { timeout: 300_000 }, async () => {
  const dir = fs.mkdtempSync(join(tmpdir(), "tsvisor-share-inval-"));
  fs.writeFileSync(join(dir, "log"), "aaaa\nbbbb\n");
  // The guest reads the first line (the whole file comes into its page cache),
  // says so, waits for the host's change, then reads on through the same fd
  // once the attributes it holds have expired (1 s).
  const script = [
    "exec 3< /mnt/s/log",
    "read first <&3",
    "echo first=$first",
    ": > /mnt/s/ready",
    "while [ ! -e /mnt/s/go ]; do sleep 0.2; done",
    "sleep 1.5",
    "read second <&3",
    "echo second=$second",
  ].join("; ");
  try {
    const run = tsvisor(["run", "--share", `${dir}:/mnt/s`, "--", "sh", "-c", script]);
    for (let i = 0; !fs.existsSync(join(dir, "ready")); i++) {
      assert.ok(i < 3000, "the guest never read the file");
      await new Promise((r) => setTimeout(r, 50));
    }
    fs.writeFileSync(join(dir, "log"), "aaaa\ncccc\n"); // same size: only the mtime tells
    fs.writeFileSync(join(dir, "go"), "");
    const out = reported(ok(await run));
    assert.equal(out.first, "aaaa");
    assert.equal(out.second, "cccc", "the guest read its stale cached page");
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("--share usage errors: a HOSTDIR missing or not a directory, a bad GUESTDIR: one line, exit 2", async () => {
  const file = join(fs.mkdtempSync(join(tmpdir(), "tsvisor-share-bad-")), "file");
  fs.writeFileSync(file, "");
  for (const [spec, pattern] of [
    ["/no/such/dir:/mnt", /does not exist/],
    [`${file}:/mnt`, /is not a directory/],
    ["/tmp", /expected HOSTDIR:GUESTDIR/],
    ["/tmp:relative", /absolute path/],
    ["/tmp:/mnt/a b", /absolute path/],
  ] as const) {
    const r = await tsvisor(["run", "--share", spec, "--", "true"]);
    assert.equal(r.status, 2, `${spec}: ${r.stderr}`);
    oneErrorLine(r, pattern);
  }
});
