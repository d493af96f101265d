// The guest agent of `tsvisor vm exec` (agent/agent.c): compiled static for
// riscv64 with Debian's cross compiler (gcc-riscv64-linux-gnu and
// libc6-dev-riscv64-cross) when the initramfs is built, and put in it as
// /bin/tsvisor-agent. Without the compiler the image is built without it
// (and says so); `vm exec` then reports that the guest has no agent.
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createHash } from "node:crypto";
import { projectRoot } from "../project-root.js";

export const AGENT_CC = "riscv64-linux-gnu-gcc";
export const AGENT_PATH = "/bin/tsvisor-agent";
/** The vsock port it listens on. */
export const AGENT_PORT = 52;

export const AGENT_SOURCE = join(projectRoot(), "src", "images", "agent", "agent.c");

let haveCompiler: boolean | undefined;

/** Can this machine build the agent? (asked once a process: it costs a process spawn) */
export function agentBuildable(): boolean {
  haveCompiler ??= spawnSync(AGENT_CC, ["--version"], { stdio: "ignore" }).status === 0;
  return haveCompiler && existsSync(AGENT_SOURCE);
}

/** What of the agent goes into the initramfs recipe: its source, and whether it can be built here. */
export function agentRecipe(): string {
  const src = existsSync(AGENT_SOURCE) ? readFileSync(AGENT_SOURCE) : Buffer.alloc(0);
  return `${createHash("sha256").update(src).digest("hex").slice(0, 16)}:${agentBuildable() ? "built" : "none"}`;
}

/** The agent binary, or why there is none (one line). */
export function buildAgent(): { binary: Uint8Array } | { missing: string } {
  if (!existsSync(AGENT_SOURCE)) return { missing: `${AGENT_SOURCE} is missing` };
  if (!agentBuildable()) {
    return { missing: `${AGENT_CC} is not installed (Debian: gcc-riscv64-linux-gnu libc6-dev-riscv64-cross)` };
  }
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-agent-"));
  try {
    const out = join(dir, "tsvisor-agent");
    const r = spawnSync(AGENT_CC, ["-static", "-Os", "-s", "-Wall", "-o", out, AGENT_SOURCE], { encoding: "utf8" });
    if (r.status !== 0) return { missing: `${AGENT_CC} failed on ${AGENT_SOURCE}: ${(r.stderr || r.error?.message || "").trim().split("\n")[0]}` };
    return { binary: new Uint8Array(readFileSync(out)) };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
