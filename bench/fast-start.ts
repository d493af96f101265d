// Fast-start figure (issue 15): wall time of `tsvisor run -- true` as a user
// runs it, from spawning node to its exit, restored from the cached snapshot
// of the waiting guest ("warm", N runs) and booted cold once (--no-snapshot).
// The first run makes the snapshot if there is none yet and is not counted.
// The lead's `npm run bench:snapshot` includes benchFastStart().
//
//   node dist/bench/fast-start.js [--runs N]

import { spawn } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const bin = join(root, "bin", "tsvisor.js");

/** One `tsvisor run [flags] -- true`: its wall time in ms; throws unless it exits 0. */
function timeRun(flags: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const start = performance.now();
    const child = spawn(process.execPath, [bin, "run", ...flags, "--", "true"], { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("error", reject);
    child.on("close", (status) => {
      const ms = performance.now() - start;
      if (status === 0) resolve(ms);
      else reject(new Error(`tsvisor run ${flags.join(" ")} -- true: status ${status}: ${stderr.trim()}`));
    });
  });
}

export async function benchFastStart(runs = 10): Promise<{ warmMs: number[]; coldMs: number[] }> {
  await timeRun([]); // makes the snapshot when there is none
  const warmMs: number[] = [];
  for (let i = 0; i < runs; i++) warmMs.push(await timeRun([]));
  const coldMs = [await timeRun(["--no-snapshot"])];
  return { warmMs, coldMs };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({ options: { runs: { type: "string" } } });
  const { warmMs, coldMs } = await benchFastStart(values.runs ? Number(values.runs) : 10);
  const sorted = [...warmMs].sort((a, b) => a - b);
  const f = (ms: number) => `${ms.toFixed(0)} ms`;
  process.stdout.write(`tsvisor run -- true, warm (restored): min ${f(sorted[0])}, median ${f(sorted[sorted.length >> 1])}, max ${f(sorted[sorted.length - 1])} (${warmMs.length} runs)\n`);
  process.stdout.write(`tsvisor run -- true, cold (--no-snapshot): ${f(coldMs[0])}\n`);
}
