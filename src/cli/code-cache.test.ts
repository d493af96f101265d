// The CLI's bundle loaded with V8's code cache (code-cache.ts): each load is
// a process of its own, because the cache is written when the process exits.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { codeCachePath } from "./code-cache.js";
import { runsLinuxGuest } from "./launch.js";

const LOADER = new URL("./code-cache.js", import.meta.url).href;

/** Load `file` as the launcher does, in a new process, and call its `greet`. */
function load(file: string, cacheDir: string, command = "run"): string {
  const script = `const { loadWithCodeCache } = await import(${JSON.stringify(LOADER)});
    const m = loadWithCodeCache(${JSON.stringify(file)}, ${JSON.stringify(command)}, ${JSON.stringify(cacheDir)});
    process.stdout.write(m.greet(m.fromRequire));`;
  const r = spawnSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout;
}

function fixture(): { dir: string; file: string; cache: string } {
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-code-cache-"));
  const file = join(dir, "bundle.cjs");
  // Module scope as Node gives it: require, module, __filename.
  writeFileSync(file, `const { basename } = require("node:path");
module.exports.fromRequire = basename(__filename);
module.exports.greet = (name) => "hello from " + name;\n`);
  return { dir, file, cache: join(dir, "cache") };
}

test("a bundle runs with its own require and __filename, and its code is cached for the next run of the command", () => {
  const { dir, file, cache } = fixture();
  try {
    assert.equal(load(file, cache), "hello from bundle.cjs");
    const path = codeCachePath(file, "run", cache);
    const first = statSync(path).mtimeMs;
    assert.ok(statSync(path).size > 0);
    // Accepted the next time: not written again.
    assert.equal(load(file, cache), "hello from bundle.cjs");
    assert.equal(statSync(path).mtimeMs, first);
    // Another command has a cache of its own; an unknown word shares "other".
    load(file, cache, "vm");
    load(file, cache, "no-such-command");
    assert.deepEqual(readdirSync(join(cache, "code")).map((n) => n.split("-")[0]).sort(), ["other", "run", "vm"]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a corrupted cache is refused by V8 and written again; a changed bundle gets a new cache and the old one goes", () => {
  const { dir, file, cache } = fixture();
  try {
    load(file, cache);
    const path = codeCachePath(file, "run", cache);
    writeFileSync(path, Buffer.alloc(statSync(path).size, 0x5a));
    assert.equal(load(file, cache), "hello from bundle.cjs");
    assert.notEqual(readFileSync(path)[0], 0x5a);
    // Same length, other code: V8 checks only the length; the name changes with the file.
    writeFileSync(file, readFileSync(file, "utf8").replace("hello", "HELLO"));
    assert.equal(load(file, cache), "HELLO from bundle.cjs");
    assert.deepEqual(readdirSync(join(cache, "code")), [codeCachePath(file, "run", cache).split("/").pop()]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a cache directory that cannot be written costs only the compile", () => {
  const { dir, file } = fixture();
  try {
    const blocked = join(dir, "not-a-dir");
    writeFileSync(blocked, "");
    assert.equal(load(file, blocked), "hello from bundle.cjs");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the launcher starts a pCPU worker early only for runs that boot a Linux guest", () => {
  assert.equal(runsLinuxGuest(["run"]), true);
  assert.equal(runsLinuxGuest(["run", "--mem", "256M", "--", "ls", "--bare"]), true);
  assert.equal(runsLinuxGuest(["run", "--bare", "x.elf"]), false);
  assert.equal(runsLinuxGuest(["run", "--demo"]), false);
  assert.equal(runsLinuxGuest(["run", "--help"]), false);
  assert.equal(runsLinuxGuest(["vm", "ls"]), false);
  assert.equal(runsLinuxGuest([]), false);
});
