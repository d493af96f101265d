// Parsing of sizes and counts given on the command line.

export class UsageError extends Error {}

const UNITS: Record<string, number> = { "": 1, k: 1 << 10, m: 1 << 20, g: 1 << 30 };

/** "256M", "1G", "65536", "512k" -> bytes (binary units, as QEMU's -m). A bare
 *  number is taken as MiB when below 64 KiB, the way `-m 512` means 512 MiB. */
export function parseSize(flag: string, text: string): number {
  const m = /^(\d+)\s*([kKmMgG]?)(?:i?[bB])?$/.exec(text.trim());
  if (!m) throw new UsageError(`${flag}: expected a size such as 256M or 1G, got '${text}'`);
  let n = Number(m[1]) * UNITS[m[2].toLowerCase()];
  if (m[2] === "" && n < 65536) n *= UNITS.m;
  if (!Number.isSafeInteger(n) || n <= 0) throw new UsageError(`${flag}: size out of range: '${text}'`);
  return n;
}

/** As parseSize, and "0" (in any unit) is 0: for sizes where zero means none or off. */
export function parseSizeOrZero(flag: string, text: string): number {
  return /^\s*0+\s*([kKmMgG]?)(i?[bB])?\s*$/.test(text) ? 0 : parseSize(flag, text);
}

export function parseCount(flag: string, text: string): bigint {
  if (!/^\d+$/.test(text.trim())) throw new UsageError(`${flag}: expected a whole number, got '${text}'`);
  const n = BigInt(text.trim());
  if (n <= 0n) throw new UsageError(`${flag}: must be at least 1`);
  return n;
}

export function parseSeconds(flag: string, text: string): number {
  const n = Number(text);
  if (!/^\d+(\.\d+)?$/.test(text.trim()) || !(n > 0)) throw new UsageError(`${flag}: expected a number of seconds, got '${text}'`);
  return n;
}
