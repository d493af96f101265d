// The checkout's root directory (where package.json, build/ and bin/ are), for
// the files the code finds beside itself: build/core.wasm, the native helpers,
// the agent's C source, bin/tsvisor.js.
//
// Found by this module's own place, two directories below the root: as
// compiled, dist/src/project-root.js; as bundled (scripts/build.mjs), whatever
// chunk of dist/bundle/ holds this code. The bundle's directory is chosen to be
// at that same depth, so one relative path serves both, with no file system
// walk on the start path and nothing else that counts directories. Moving the
// bundle deeper or shallower must change this too (build.mjs says so where it
// names the directory).
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

export function projectRoot(): string {
  return ROOT;
}
