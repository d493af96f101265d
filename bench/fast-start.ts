// Fast-start figure (issue 15): wall time of `tsvisor run -- true` as a user
// runs it, from spawning node to its exit, restored from the cached snapshot
// of the waiting guest ("warm", N runs) and booted cold once (--no-snapshot).
// The first run makes the snapshot if there is none yet and is not counted.
// The same with a shared folder (`--share DIR:/mnt -- ls /mnt`: the restored
// guest mounts it), whose snapshot is another one. Each warm run is followed
// by a `node -e 0`, Node's own start and exit, the floor of any Node program
// on the machine: this machine's speed moves by a quarter from one hour to
// the next, and the difference says what tsvisor's part is.
// The lead's `npm run bench:snapshot` includes benchFastStart().
//
//   node dist/bench/fast-start.js [--runs N]

import { spawn } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const bin = join(root, "bin", "tsvisor.js");

/** One `tsvisor run [flags] -- CMD` (default `true`): its wall time in ms; throws unless it exits 0. */
function timeRun(flags: string[], command = ["true"]): Promise<number> {
  return timeNode([bin, "run", ...flags, "--", ...command]);
}

/** `node ARGS...`: its wall time in ms, from spawn to exit; throws unless it exits 0. */
function timeNode(args: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const start = performance.now();
    const child = spawn(process.execPath, args, { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("error", reject);
    child.on("close", (status) => {
      const ms = performance.now() - start;
      if (status === 0) resolve(ms);
      else reject(new Error(`node ${args.join(" ")}: status ${status}: ${stderr.trim()}`));
    });
  });
}

export async function benchFastStart(runs = 10): Promise<{ warmMs: number[]; nodeMs: number[]; coldMs: number[]; share: { warmMs: number[]; coldMs: number[] } }> {
  await timeRun([]); // makes the snapshot when there is none
  const warmMs: number[] = [];
  const nodeMs: number[] = [];
  for (let i = 0; i < runs; i++) {
    warmMs.push(await timeRun([]));
    nodeMs.push(await timeNode(["-e", "0"]));
  }
  const coldMs = [await timeRun(["--no-snapshot"])];
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-bench-share-"));
  try {
    const share = ["--share", `${dir}:/mnt`];
    const ls = ["ls", "/mnt"];
    await timeRun(share, ls);
    const shareWarm: number[] = [];
    for (let i = 0; i < runs; i++) shareWarm.push(await timeRun(share, ls));
    return { warmMs, nodeMs, coldMs, share: { warmMs: shareWarm, coldMs: [await timeRun(["--no-snapshot", ...share], ls)] } };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({ options: { runs: { type: "string" } } });
  const { warmMs, nodeMs, coldMs, share } = await benchFastStart(values.runs ? Number(values.runs) : 10);
  const f = (ms: number) => `${ms.toFixed(0)} ms`;
  const spread = (all: number[]) => {
    const sorted = [...all].sort((a, b) => a - b);
    return `min ${f(sorted[0])}, median ${f(sorted[sorted.length >> 1])}, max ${f(sorted[sorted.length - 1])} (${all.length} runs)`;
  };
  process.stdout.write(`tsvisor run -- true, warm (restored): ${spread(warmMs)}\n`);
  process.stdout.write(`node -e 0 between them (Node's own start and exit): ${spread(nodeMs)}\n`);
  process.stdout.write(`tsvisor run -- true, cold (--no-snapshot): ${f(coldMs[0])}\n`);
  process.stdout.write(`tsvisor run --share DIR:/mnt -- ls /mnt, warm (restored): ${spread(share.warmMs)}\n`);
  process.stdout.write(`tsvisor run --share DIR:/mnt -- ls /mnt, cold (--no-snapshot): ${f(share.coldMs[0])}\n`);
}
