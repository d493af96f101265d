// The memory manager's flags (memory/manager/memory-manager.ts), shared by
// `tsvisor host` and `tsvisor run`: the frame pool's size, a swap file, the
// compressed page pool, page sharing and reclaim. Each wrong value is a
// UsageError of one line naming the flag.
import { UsageError, parseSize, parseSizeOrZero } from "./size.js";
import { MAX_STORE_BYTES } from "../memory/store/compressed-store.js";
import { MAX_SWAP_BYTES } from "../memory/store/swap-file.js";
import type { OvercommitOptions } from "../memory/manager/memory-manager.js";

/** The frame pool's bounds (host/host.ts checks the same). */
export const MIN_POOL_BYTES = 16 << 20;
export const MAX_POOL_BYTES = 4 * 2 ** 30;

/** parseArgs options of the flags `run` and `host` both take. */
export const OVERCOMMIT_OPTIONS = {
  swap: { type: "string" },
  compress: { type: "string" },
  "no-sharing": { type: "boolean" },
} as const;

/** And the ones only the daemon takes. */
export const HOST_OVERCOMMIT_OPTIONS = {
  ...OVERCOMMIT_OPTIONS,
  "sharing-rate": { type: "string" },
  "no-reclaim": { type: "boolean" },
} as const;

export interface OvercommitFlags {
  swap?: string;
  compress?: string;
  "no-sharing"?: boolean;
  "sharing-rate"?: string;
  "no-reclaim"?: boolean;
}

const mibText = (bytes: number) => (bytes >= 1 << 30 && bytes % (1 << 30) === 0 ? `${bytes / (1 << 30)}G` : `${Math.floor(bytes / (1 << 20))}M`);

/** --mem of `host`, --host-mem of `run`: 16 MiB .. 4 GiB. */
export function parsePoolSize(flag: string, text: string): number {
  const n = parseSize(flag, text);
  if (n < MIN_POOL_BYTES || n > MAX_POOL_BYTES) throw new UsageError(`${flag}: the host's pool must be ${mibText(MIN_POOL_BYTES)}..${mibText(MAX_POOL_BYTES)}, got '${text}'`);
  return n;
}

/** --swap SIZE: 4 KiB .. 512 GiB. */
export function parseSwapSize(text: string): number {
  const n = parseSize("--swap", text);
  if (n < 4096 || n > MAX_SWAP_BYTES) throw new UsageError(`--swap: expected 4K..${mibText(MAX_SWAP_BYTES)}, got '${text}'`);
  return n;
}

/** --compress SIZE: 0 (no compression) or 4 KiB .. 16 GiB. */
export function parseCompressSize(text: string): number {
  const n = parseSizeOrZero("--compress", text);
  if (n === 0) return 0;
  if (n < 4096 || n > MAX_STORE_BYTES) throw new UsageError(`--compress: expected 0 (off) or 4K..${mibText(MAX_STORE_BYTES)}, got '${text}'`);
  return n;
}

/** --sharing-rate PAGES/MS: pages looked at per pass, and the pause between passes. */
export function parseSharingRate(text: string): { pagesPerPass: number; intervalMs: number } {
  const m = /^\s*(\d+)\s*\/\s*(\d+)\s*$/.exec(text);
  const pagesPerPass = m ? Number(m[1]) : NaN;
  const intervalMs = m ? Number(m[2]) : NaN;
  if (!(pagesPerPass >= 1 && pagesPerPass <= 1 << 20 && intervalMs >= 1 && intervalMs <= 60_000)) {
    throw new UsageError(`--sharing-rate: expected PAGES/MS, pages per pass 1..${1 << 20} and ms between passes 1..60000, e.g. 2048/100, got '${text}'`);
  }
  return { pagesPerPass, intervalMs };
}

/** The flags as OvercommitOptions; the swap file goes at `swapPath()` (called only with --swap). */
export function overcommitOptions(v: OvercommitFlags, swapPath: () => string): OvercommitOptions {
  if (v["no-sharing"] && v["sharing-rate"] !== undefined) throw new UsageError("--sharing-rate and --no-sharing: choose one");
  const out: OvercommitOptions = {};
  if (v.compress !== undefined) out.compressBytes = parseCompressSize(v.compress);
  if (v["no-sharing"]) out.sharing = false;
  else if (v["sharing-rate"] !== undefined) out.sharing = parseSharingRate(v["sharing-rate"]);
  if (v["no-reclaim"]) out.reclaim = false;
  if (v.swap !== undefined) out.swap = { path: "", bytes: parseSwapSize(v.swap) };
  // The path last: a temporary directory is made only once every flag is good.
  if (out.swap) out.swap.path = swapPath();
  return out;
}
