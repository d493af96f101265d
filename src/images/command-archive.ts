// What `tsvisor run -- CMD` adds to the stock initramfs: the command (and
// its stdin) as a second archive. Apart from the initramfs build, so a run
// that needs only these does not load the build's modules.
import { CpioArchive } from "./cpio.js";
import { ImageError } from "./errors.js";
import { ARGV_PATH, STDIN_PATH } from "./init.js";

/**
 * The second archive `tsvisor run -- CMD ARGS...` appends to the initrd:
 * /tsvisor/argv, a POSIX sh fragment that init sources to set "$@", and with
 * `stdin`, /tsvisor/stdin, which init gives the command as its input.
 */
export function commandArchive(argv: string[], stdin?: Uint8Array): Uint8Array {
  if (argv.length === 0) throw new ImageError("no command to run in the guest");
  const bad = argv.find((w) => w.includes("\0"));
  if (bad !== undefined) throw new ImageError(`command argument ${JSON.stringify(bad)} contains a NUL byte, which no shell word can hold`);
  const a = new CpioArchive().file(ARGV_PATH.slice(1), `set -- ${argv.map(shellQuote).join(" ")}\n`, 0o644);
  if (stdin) a.file(STDIN_PATH.slice(1), stdin, 0o644);
  return a.toBytes();
}

/**
 * One word for POSIX sh: inside single quotes nothing is special except the
 * closing quote (XCU 2.2.2), so a ' is written as '\'' (close, escaped
 * quote, reopen).
 */
export function shellQuote(word: string): string {
  return `'${word.replace(/'/g, `'\\''`)}'`;
}
