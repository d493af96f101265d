// Where the host daemon's socket and state live, and how clients find it.
//
// Socket: --socket/--host PATH, else $TSVISOR_HOST (clients), else
// $XDG_RUNTIME_DIR/tsvisor/host.sock, else host.sock in tsvisor's cache
// directory (images/image-cache.ts: $TSVISOR_CACHE, $XDG_CACHE_HOME/tsvisor,
// ~/.cache/tsvisor). State: --state-dir DIR, else $XDG_STATE_HOME/tsvisor,
// else ~/.local/state/tsvisor (XDG Base Directory Specification).
import { homedir } from "node:os";
import { join } from "node:path";
import { defaultCacheDir } from "../images/image-cache.js";

export function defaultSocketPath(env: NodeJS.ProcessEnv = process.env): string {
  if (env.XDG_RUNTIME_DIR) return join(env.XDG_RUNTIME_DIR, "tsvisor", "host.sock");
  return join(defaultCacheDir(env), "host.sock");
}

/** The socket a client talks to: --host, else $TSVISOR_HOST, else the default. */
export function clientSocketPath(flag: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  return flag ?? (env.TSVISOR_HOST || defaultSocketPath(env));
}

export function defaultStateDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.XDG_STATE_HOME) return join(env.XDG_STATE_HOME, "tsvisor");
  return join(homedir(), ".local", "state", "tsvisor");
}
