// What bin/tsvisor.js runs: the pCPU worker a Linux guest will need,
// started first (host/pcpu-prestart.ts), then the CLI's code, then the
// command. bin/tsvisor.js runs this from the bundle (scripts/build.mjs),
// whose CLI is loaded with V8's code cache (code-cache.ts), or from the
// compiled modules in dist/src, which load slower.

import { pathToFileURL } from "node:url";
import { startPcpuWorker, type PrestartedPcpu } from "../host/pcpu-prestart.js";
import { loadWithCodeCache } from "./code-cache.js";

/** What the launcher started before the CLI's code was loaded, for main() to hand on. */
export interface EarlyStart {
  pcpus: PrestartedPcpu[];
}

/** The files of one build of the CLI. */
export interface CliFiles {
  /** cli/main.js, or the bundle's main.cjs. */
  main: string;
  /** host/pcpu-worker.js, or the bundle's pcpu-worker.cjs. */
  pcpuWorker: string;
  /** Whether `main` is a CommonJS bundle, loaded with the code cache. */
  bundled: boolean;
}

type Main = (argv: string[], early?: EarlyStart) => Promise<void>;

export async function launch(argv: string[], files: CliFiles): Promise<void> {
  const early: EarlyStart = { pcpus: runsLinuxGuest(argv) ? [startPcpuWorker(pathToFileURL(files.pcpuWorker))] : [] };
  const { main } = (files.bundled ? loadWithCodeCache(files.main, argv[0]) : await import(pathToFileURL(files.main).href)) as { main: Main };
  await main(argv, early);
}

/** Whether the command line boots a Linux guest in this process: `run`,
 *  unless it runs a bare-metal ELF (--bare, --demo: on the main thread) or
 *  only asks for its help. */
export function runsLinuxGuest(argv: readonly string[]): boolean {
  if (argv[0] !== "run") return false;
  const own = argv.includes("--") ? argv.slice(1, argv.indexOf("--")) : argv.slice(1);
  return !own.some((a) => a === "--bare" || a === "--demo" || a === "--help" || a === "-h");
}
