// Running the tsvisor command from tests, as a user runs it: a child process
// with piped stdio, everything it prints collected.
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { join } from "node:path";
import { projectRoot } from "../project-root.js";

export const root = projectRoot();
export const bin = join(root, "bin", "tsvisor.js");
export const BOOT_TIMEOUT_MS = 300_000;

export interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** tsvisor with `stdin` piped in (or none) and `env` added to this process's environment, collecting everything it prints; killed after `timeoutMs` (stderr says so). */
export function tsvisor(args: string[], stdin: string | Buffer = "", env: NodeJS.ProcessEnv = {}, timeoutMs = BOOT_TIMEOUT_MS): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bin, ...args], { stdio: ["pipe", "pipe", "pipe"], env: { ...process.env, ...env } });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      stderr += `(test: killed after ${timeoutMs / 1000} s)\n`;
      child.kill("SIGKILL");
    }, timeoutMs);
    child.on("error", reject);
    child.on("close", (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
    child.stdin.end(stdin);
  });
}

/** The run failed with exactly one line on stderr, "tsvisor: ..." matching `pattern`. */
export function oneErrorLine(r: Run, pattern: RegExp): void {
  const lines = r.stderr.split("\n").filter((l) => l !== "");
  assert.equal(lines.length, 1, `one line on stderr, got: ${r.stderr}`);
  assert.match(lines[0], /^tsvisor: /);
  assert.match(lines[0], pattern);
}

/** Why the tests that talk to the guest agent cannot run here (the image builds
 *  the agent with Debian's riscv64-linux-gnu-gcc), or false when they can. */
export const noGuestAgent: string | false = spawnSync("riscv64-linux-gnu-gcc", ["--version"], { stdio: "ignore" }).status === 0
  ? false : "riscv64-linux-gnu-gcc not installed: the image has no guest agent";

/** Pulls the guest image (or verifies the cache), so later boots measure only booting. */
export function pullImage(): void {
  const r = spawnSync(process.execPath, [bin, "image", "pull"], { encoding: "utf8", timeout: 900_000 });
  assert.equal(r.status, 0, `image pull failed: ${r.stderr}`);
}

/** The run ended with status 0; its stdout. */
export function ok(r: Run, what = "tsvisor"): string {
  assert.equal(r.status, 0, `${what}: status ${r.status}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`);
  return r.stdout;
}

/** The value of each `key=value` line a guest printed. */
export function reported(stdout: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of stdout.split("\n")) {
    const m = /^([a-z][\w-]*)=(.*)$/.exec(line.trim());
    if (m) out[m[1]] = m[2];
  }
  return out;
}
