// Fast start for `tsvisor run -- CMD` (issue 15): a snapshot of the stock
// guest, booted and waiting for a command, kept in the image cache and
// restored instead of booting.
//
// Guest side: the snapshot's guest boots the stock kernel and initrd with
// the same command line, vCPUs, memory, console and devices as the run, but
// instead of the command archive (images/initramfs.ts commandArchive) it
// gets the wait archive below, whose /tsvisor/argv (the fragment init
// sources to set "$@", images/init.ts) prints WAIT_MARKER and then reads the
// command from the console. So the image's init is unchanged (no image
// rebuild) and the same initrd serves both ways.
//
// The waiting guest has started /tsvisor/agent (a 976-byte static
// program, below) in the background, reading the console; the agent prints
// WAIT_MARKER, so the snapshot holds it already waiting in its read(). The
// message the host then types is a line for the agent, then one or two
// blocks for the shell. The console is a tty in canonical mode with echo
// off (init ran `stty -echo -onlcr`): a read() returns at most one line, so
// the agent, the shell's `read` and `head -n COUNT` take exactly what is
// theirs and leave the rest unread (busybox sed reads a line ahead: it
// would not). A line of printable ASCII or of base64 has no byte the line
// discipline acts on (^C, ^D, ^S, DEL...). Every byte typed on the UART
// (--console ttyS0) costs the guest two MMIO exits (virtio-console, a
// command's default, takes the message in one request), and every program
// it starts tens of milliseconds (a fork and exec of busybox: 1.4 M
// instructions, interpreted), so the message is short and the programs few:
//   0. "#TIME RANDOM": the host's time of day and 32 fresh random bytes in
//      base64. The agent writes the line to /dev/urandom, asks the kernel to
//      reseed its CRNG from the input pool (ioctl RNDRESEEDCRNG), sets the
//      clock from it and says so on the FIFO /tsvisor/ready, which the shell
//      waits on. Without the reseed every
//      guest restored from one snapshot would draw the same "random" numbers
//      (a write to /dev/urandom only mixes into the input pool, which the
//      CRNG reads at its next reseed, seconds away); without the clock, the
//      guest's time of day would go on from when the snapshot was taken.
//   1. A block: the shell fragment (the system disk remounted read-write,
//      mounts of the run's --share folders, which init mounts itself on a
//      cold boot, then `set --` with the command), written to
//      /tsvisor/cmd (as plain text when it is printable ASCII in lines
//      under 4000 bytes, read by shell builtins: no program started; else
//      base64), then sourced by init.
//   2. With a piped stdin, a block: the command's stdin in base64, written
//      to /tsvisor/stdin as the command archive does (an empty one is made
//      by the fragment).
// Then init goes on as for an archived command: the command runs on the
// console, and its status goes out through the finisher. The shell writes
// it to the FIFO /tsvisor/status, where the agent waits for it, and the
// agent writes it to the finisher, as devmem would: no process starts or
// ends after the command (an exec tore the shell's address space down
// first, a tenth of the instructions of `run -- true`). Should the command
// have killed the agent, /tsvisor/finish (static too, 244 bytes) replaces
// the shell a second later and writes it instead.
//
// A run with --share restores too: its snapshot was taken with the virtio-fs
// devices (share0, share1, ...) present but nothing mounted, so they hold no
// FUSE session (devices/virtio/fs/device.ts) and each run's folders may be
// other directories; the key counts the shares. So does `run --image debian
// -- CMD`: its snapshot has the system disk mounted read-only (nothing
// written to it), and each run's new overlay on the same base reads the
// same; the key names the base's build, and the fragment remounts the disk
// read-write. A kept overlay (--disk-name) boots cold: earlier runs changed it.
//
// Host side (run-linux.ts): the cache key (snapshotKey) names everything that
// makes the booted guest what it is; a run whose key has a snapshot restores
// it and types the message; one without boots with the wait archive, takes
// the snapshot when WAIT_MARKER appears, then types the message into the
// same guest.

import { createHash, randomBytes } from "node:crypto";
import { readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { CpioArchive } from "../images/cpio.js";
import { INITRD_FILE, KERNEL_FILE, MANIFEST_FILE, type ImageManifest } from "../images/image-cache.js";
import { ARGV_PATH, STDIN_PATH } from "../images/init.js";
import { shellQuote } from "../images/command-archive.js";
import { VERSION } from "./version.js";

/** Printed by the waiting guest (an OSC sequence: a terminal shows nothing
 *  should it ever get through); the host hides it from the output. */
export const WAIT_MARKER = "\x1b]9999;tsvisor-wait\x07";
export const AGENT_PATH = "/tsvisor/agent";
const READY_PATH = "/tsvisor/ready";
const STATUS_PATH = "/tsvisor/status";
const FINISH_PATH = "/tsvisor/finish";
const CMD_PATH = "/tsvisor/cmd";
export const SEED_BYTES = 32;

/**
 * A piped stdin larger than this boots cold, where the command archive takes
 * it at once: a restored guest gets it typed on its console, as base64. The
 * UART moves a few kB/s (300 kB took a minute); virtio-console about 150
 * kB/s (300 kB: 2.2 s, against a cold boot's 5.5 s).
 */
export function fastStdinLimit(console: "ttyS0" | "hvc0"): number {
  return console === "hvc0" ? 256 << 10 : 2 << 10;
}

export const WAIT_SCRIPT = `# tsvisor fast start (cli/fast-start.ts): wait for the command on the console.
tsvisor_block() {
  read -r kind n
  if [ "$kind" = p ]; then
    while [ "$n" -gt 0 ]; do IFS= read -r l; printf '%s\\n' "$l"; n=$((n - 1)); done
  else
    head -n "$n" | base64 -d
  fi
}
# init's finish without its sync (a fast-start guest's one disk, a system
# disk, is read-only again by then: init's run_in_root), and without a fork
# or an exec: the agent writes the status to the finisher. The FIFO opened
# read-write never blocks (fifo(7)), nor does the wait on the other, so a
# command that killed the agent costs a second, not a hang.
finish() {
  if [ "$1" -eq 0 ]; then value=$((0x5555)); else value=$(( ($1 << 16) | 0x3333 )); fi
  { echo $value >&9; } 9<>${STATUS_PATH}
  read -r -t 1 _ 0<>${READY_PATH}
  exec ${FINISH_PATH} $value
}
# The agent reads the first line typed, so the console goes by fd 3 (a
# background command's stdin would be /dev/null). Started from a subshell,
# it is no job of this shell: a command such as \`wait\` or \`jobs\` run by
# this shell does not see it.
exec 3<&0
(${AGENT_PATH} <&3 &)
exec 3<&-
read -r tsvisor_seeded < ${READY_PATH}
[ "$tsvisor_seeded" = 0 ] || echo "tsvisor init: could not reseed the kernel's random number generator or set the clock" >&2
tsvisor_block > ${CMD_PATH}
. ${CMD_PATH}
`;

/**
 * /tsvisor/agent, a static RV64 ELF (riscv64-unknown-elf-as -march=rv64imac,
 * ld -n -s, objcopy -R .riscv.attributes), run with the console as stdin:
 *   li a0,-100; lla a1,statuspath; li a2,2; li a7,56; ecall; mv s4,a0  # openat(AT_FDCWD, "/tsvisor/status", O_RDWR)
 *   li a0,1; lla a1,marker; li a2,20; li a7,64; ecall                # write(1, WAIT_MARKER, 20)
 *   addi sp,sp,-2048; addi sp,sp,-2048; li s0,'1'                    # s0: the answer for /tsvisor/ready
 *   li a0,0; mv a1,sp; li a2,4096; li a7,63; ecall; blez a0,ready    # read(0, stack, 4096): one line of a tty
 *   mv s1,a0; li a0,-100; lla a1,urandom; li a2,1; li a7,56; ecall   # openat(AT_FDCWD, "/dev/urandom", O_WRONLY)
 *   bltz a0,ready; mv s2,a0; mv a1,sp; mv a2,s1; li a7,64; ecall     # write(urandom, stack, n)
 *   bltz a0,ready; mv a0,s2; li a1,0x5207; li a7,29; ecall           # ioctl(urandom, RNDRESEEDCRNG)
 *   bnez a0,ready; addi t0,sp,1; li t1,0; li t3,10                   # the digits after the line's first byte ("#")
 *   1: lbu t2,0(t0); addi t2,t2,-48; bgeu t2,t3,2f
 *   mul t1,t1,t3; add t1,t1,t2; addi t0,t0,1; j 1b
 *   2: beqz t1,3f; addi a1,sp,-16; sd t1,0(a1); sd zero,8(a1)
 *   li a0,0; li a7,112; ecall; bnez a0,ready                         # clock_settime(CLOCK_REALTIME, {seconds, 0})
 *   3: li s0,'0'
 *   ready: li a0,-100; lla a1,readypath; li a2,1; li a7,56; ecall    # openat(AT_FDCWD, "/tsvisor/ready", O_WRONLY)
 *   bltz a0,die; mv s2,a0; sb s0,0(sp); li t0,10; sb t0,1(sp)
 *   mv a1,sp; li a2,2; li a7,64; ecall                               # write(ready, "0\n" or "1\n", 2)
 *   mv a0,s2; li a7,57; ecall                                        # close(ready)
 *   mv a0,s4; bltz a0,die                                            # the status FIFO, open since before the snapshot: read-write,
 *   mv a1,sp; li a2,32; li a7,63; ecall; blez a0,die                 # so a value written before this read waits in it, and no EOF
 *                                                                    # read(status, stack, 32): the finisher's value in decimal
 *   mv t0,sp; li s3,0; li t3,10
 *   4: lbu t2,0(t0); addi t2,t2,-48; bgeu t2,t3,5f
 *   mul s3,s3,t3; add s3,s3,t2; addi t0,t0,1; j 4b
 *   5: li a0,-100; lla a1,mem; li a2,0x101002; li a7,56; ecall       # openat(AT_FDCWD, "/dev/mem", O_RDWR|O_SYNC)
 *   bltz a0,die; mv a4,a0
 *   li a0,0; li a1,4096; li a2,3; li a3,1; li a5,0x100000; li a7,222; ecall  # mmap(0, 4096, RW, MAP_SHARED, fd, FINISHER_ADDR)
 *   li t0,-4096; bgeu a0,t0,die
 *   sw s3,0(a0)                                                      # the VM ends here
 *   die: li a0,2; lla a1,msg; li a2,68; li a7,64; ecall              # write(2, msg, 68)
 *   li a0,0xfee1dead; li a1,0x28121969; li a2,0x4321fedc; li a3,0; li a7,142; ecall  # reboot(POWER_OFF), as poweroff -f
 *   li a0,1; li a7,93; ecall                                         # exit(1)
 *   marker: .ascii "\033]9999;tsvisor-wait\007"
 *   urandom: .asciz "/dev/urandom"
 *   readypath: .asciz "/tsvisor/ready"
 *   statuspath: .asciz "/tsvisor/status"
 *   mem: .asciz "/dev/mem"
 *   msg: .ascii "tsvisor init: could not report the exit status through the finisher\n"
 */
const AGENT_ELF = Buffer.from(
  "f0VMRgIBAQAAAAAAAAAAAAIA8wABAAAAsAABAAAAAABAAAAAAAAAABADAAAAAAAAAQAAAEAAOAACAEAAAwACAAMAAHAEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAgAAAAAAAAAAQAAAAUAAACwAAAAAAAAALAAAQAAAAAAsAABAAAAAABKAgAAAAAAAEoCAAAAAAAAAgAAAAAAAAATBcD5lwUAAJOFhR4JRpMIgANzAAAAKooFRZcFAACThSUaUUaTCAAEcwAAABMBAYATAQGAEwQQAwFFioUFZpMI8ANzAAAAY1CgCKqEEwXA+ZcFAACThQUYBUaTCIADcwAAAGNCBQYqiYqFJoaTCAAEcwAAAGNJBQRKhZVlm4V1IPVIcwAAACHhkwIRAAFDKU6DwwIAk4MD/WP3wwEzA8MDHpOFAvW3Yw4DAJMFAf8jsGUAI7QFAAFFkwgAB3MAAAAZ4RMEAAMTBcD5lwUAAJOFNREFRpMIgANzAAAAY0wFCCqJIwCBAKlCowBRAIqFCUaTCAAEcwAAAEqFkwiQA3MAAABShWNIBQaKhRMGAAKTCPADcwAAAGNfoASKgoFJKU6DwwIAk4MD/WP3wwGzickDnpmFAvW3EwXA+ZcFAACThSUMNxYQAAkmkwiAA3MAAABjQgUCKocBRYVlDUaFRrcHEACTCOANcwAAAP1yY3RVACMgNQEJRZcFAACThfUIEwZABJMIAARzAAAAN/UHABsF9XA2BRMF1eq3JRIom4WVljcGIkMbBsbtgUaTCOAIcwAAAAVFkwjQBXMAAAAbXTk5OTk7dHN2aXNvci13YWl0By9kZXYvdXJhbmRvbQAvdHN2aXNvci9yZWFkeQAvdHN2aXNvci9zdGF0dXMAL2Rldi9tZW0AdHN2aXNvciBpbml0OiBjb3VsZCBub3QgcmVwb3J0IHRoZSBleGl0IHN0YXR1cyB0aHJvdWdoIHRoZSBmaW5pc2hlcgoAAC5zaHN0cnRhYgAudGV4dAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAALAAAAAQAAAAYAAAAAAAAAsAABAAAAAACwAAAAAAAAAEoCAAAAAAAAAAAAAAAAAAACAAAAAAAAAAAAAAAAAAAAAQAAAAMAAAAAAAAAAAAAAAAAAAAAAAAA+gIAAAAAAAARAAAAAAAAAAAAAAAAAAAAAQAAAAAAAAAAAAAAAAAAAA==",
  "base64",
);

/**
 * /tsvisor/finish VALUE (VALUE in decimal), built as the agent:
 *   ld t0,16(sp); beqz t0,1f; li s3,0; li t3,10                      # argv[1]
 *   2: lbu t2,0(t0); addi t2,t2,-48; bgeu t2,t3,3f
 *   mul s3,s3,t3; add s3,s3,t2; addi t0,t0,1; j 2b
 *   3: li a0,-100; lla a1,mem; li a2,0x101002; li a7,56; ecall       # openat(AT_FDCWD, "/dev/mem", O_RDWR|O_SYNC)
 *   bltz a0,1f; mv a4,a0
 *   li a0,0; li a1,4096; li a2,3; li a3,1; li a5,0x100000; li a7,222; ecall  # mmap(0, 4096, RW, MAP_SHARED, fd, FINISHER_ADDR)
 *   li t0,-4096; bgeu a0,t0,1f
 *   sw s3,0(a0)                                                      # the VM ends here
 *   1: li a0,2; lla a1,msg; li a2,68; li a7,64; ecall                # write(2, msg, 68)
 *   li a0,0xfee1dead; li a1,0x28121969; li a2,0x4321fedc; li a3,0; li a7,142; ecall  # reboot(POWER_OFF), as poweroff -f
 *   li a0,1; li a7,93; ecall                                         # exit(1)
 *   mem: .asciz "/dev/mem"
 *   msg: .ascii "tsvisor init: could not report the exit status through the finisher\n"
 */
const FINISH_ELF = Buffer.from(
  "f0VMRgIBAQAAAAAAAAAAAAIA8wABAAAAsAABAAAAAABAAAAAAAAAALgBAAAAAAAAAQAAAEAAOAACAEAAAwACAAMAAHAEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAgAAAAAAAAAAQAAAAUAAACwAAAAAAAAALAAAQAAAAAAsAABAAAAAAD0AAAAAAAAAPQAAAAAAAAAAgAAAAAAAADCYmOOAgSBSSlOg8MCAJODA/1j98MBs4nJA56ZhQL1txMFwPmXBQAAk4UlCDcWEAAJJpMIgANzAAAAY0IFAiqHAUWFZQ1GhUa3BxAAkwjgDXMAAAD9cmN0VQAjIDUBCUWXBQAAk4X1BBMGQASTCAAEcwAAADf1BwAbBfVwNgUTBdXqtyUSKJuFlZY3BiJDGwbG7YFGkwjgCHMAAAAFRZMI0AVzAAAAL2Rldi9tZW0AdHN2aXNvciBpbml0OiBjb3VsZCBub3QgcmVwb3J0IHRoZSBleGl0IHN0YXR1cyB0aHJvdWdoIHRoZSBmaW5pc2hlcgoAAC5zaHN0cnRhYgAudGV4dAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAACwAAAAEAAAAGAAAAAAAAALAAAQAAAAAAsAAAAAAAAAD0AAAAAAAAAAAAAAAAAAAAAgAAAAAAAAAAAAAAAAAAAAEAAAADAAAAAAAAAAAAAAAAAAAAAAAAAKQBAAAAAAAAEQAAAAAAAAAAAAAAAAAAAAEAAAAAAAAAAAAAAAAAAAA=",
  "base64",
);

/** The archive appended to the initrd of the guest that is snapshotted (instead of a command archive). */
export function waitArchive(): Uint8Array {
  return new CpioArchive().file(ARGV_PATH.slice(1), WAIT_SCRIPT, 0o644).file(AGENT_PATH.slice(1), AGENT_ELF, 0o755).file(FINISH_PATH.slice(1), FINISH_ELF, 0o755)
    .fifo(READY_PATH.slice(1)).fifo(STATUS_PATH.slice(1)).toBytes();
}

function block(data: Uint8Array | string): string {
  const b64 = Buffer.from(data).toString("base64");
  let out = "";
  let lines = 0;
  for (let i = 0; i < b64.length; i += 76, lines++) out += `${b64.slice(i, i + 76)}\n`;
  return `b ${lines}\n${out}`;
}

/** Text as a plain block when every line is printable ASCII and fits a tty line, else base64. */
function textBlock(text: string): string {
  const lines = text.endsWith("\n") ? text.slice(0, -1).split("\n") : text.split("\n");
  if (lines.every((l) => /^[\x20-\x7e]*$/.test(l) && l.length < 4000)) return `p ${lines.length}\n${lines.join("\n")}\n`;
  return block(text);
}

/** What the run mounts once its command arrives. */
export interface CommandMounts {
  /** `run --image`: the system disk, mounted read-only at /newroot before the snapshot (init's tsvisor.root=DEV,ro). */
  systemDisk?: boolean;
  shares?: readonly { tag: string; guestDir: string }[];
}

/** What the host types on the waiting guest's console: the seed's line (the time and fresh random bytes), the command fragment, then a piped stdin. */
export function commandMessage(argv: string[], stdin: Uint8Array | undefined, nowMs = Date.now(), mounts: CommandMounts = {}): Uint8Array {
  if (argv.length === 0) throw new Error("no command to run in the guest");
  const seed = `#${Math.floor(nowMs / 1000)} ${randomBytes(SEED_BYTES).toString("base64")}\n`;
  // The shares init mounts on a cold boot (images/init.ts), mounted here:
  // the snapshot was taken before, so it holds no FUSE session to carry. A
  // system disk was mounted read-only (nothing of the run's written yet);
  // init then runs the command chrooted in it.
  let fragment = mounts.systemDisk ? `mount -o remount,rw /newroot || { echo "tsvisor init: cannot remount the root disk read-write" >&2; finish 1; }\n` : "";
  const prefix = mounts.systemDisk ? "/newroot" : "";
  fragment += (mounts.shares ?? []).map((s) => {
    const at = shellQuote(prefix + s.guestDir);
    return `mkdir -p ${at} && mount -t virtiofs ${s.tag} ${at} || echo "tsvisor init: could not mount share ${s.tag} at ${s.guestDir}" >&2\n`;
  }).join("");
  fragment += `set -- ${argv.map(shellQuote).join(" ")}\n`;
  if (stdin?.length) fragment += `tsvisor_block > ${STDIN_PATH}\n`;
  else if (stdin) fragment += `: > ${STDIN_PATH}\n`;
  return Buffer.from(seed + textBlock(fragment) + (stdin?.length ? block(stdin) : ""));
}

/**
 * Console output with WAIT_MARKER taken out (the guest prints it once); a
 * prefix of it at the end of a chunk is held back until the next.
 */
export class MarkerFilter {
  private held = "";
  private seen = false;
  constructor(private readonly out: (b: Uint8Array) => void, private readonly onMarker: () => void) {}

  write(bytes: Uint8Array): void {
    if (this.seen) return this.out(bytes);
    const text = this.held + Buffer.from(bytes).toString("latin1");
    this.held = "";
    const at = text.indexOf(WAIT_MARKER);
    if (at >= 0) {
      this.seen = true;
      const rest = text.slice(0, at) + text.slice(at + WAIT_MARKER.length);
      if (rest) this.out(Buffer.from(rest, "latin1"));
      this.onMarker();
      return;
    }
    // Hold back the longest tail that could begin the marker.
    let keep = 0;
    for (let n = Math.min(WAIT_MARKER.length - 1, text.length); n > 0; n--) {
      if (WAIT_MARKER.startsWith(text.slice(text.length - n))) {
        keep = n;
        break;
      }
    }
    this.held = text.slice(text.length - keep);
    const pass = text.slice(0, text.length - keep);
    if (pass) this.out(Buffer.from(pass, "latin1"));
  }
}

export interface SnapshotShape {
  cmdline: string;
  cpus: number;
  memBytes: number;
  console: string;
  /** The --net specs (only "user" qualifies). */
  nets: string[];
  balloon: boolean;
  /** The vsock device's guest CID (its host-side PATH is not the guest's concern), when there is one. */
  vsockCid?: number;
  /** How many shared folders (virtio-fs share0, share1, ...): the guest mounts them after the restore, so their directories are not the snapshot's concern. */
  shares?: number;
  /** The build of the system disk's base (`run --image`), whose new overlay the guest finds after a restore. */
  system?: string;
}

/**
 * The stock image as the cache key sees it, without reading the 45 MB of
 * kernel and initrd: their SHA256s from the manifest (checked against the
 * files when the snapshot was made, by the cold run's pull) and each file's
 * size, mtime and inode, so a file changed since gives another key.
 */
export function imageIdentity(imageDir: string): string | undefined {
  try {
    const manifest = JSON.parse(readFileSync(join(imageDir, MANIFEST_FILE), "utf8")) as ImageManifest;
    const files = ([KERNEL_FILE, INITRD_FILE] as const).map((name) => {
      const s = statSync(join(imageDir, name));
      return [name, manifest.files[name].sha256, s.size, s.mtimeMs, s.ino];
    });
    return JSON.stringify([manifest.recipe, files]);
  } catch {
    return undefined;
  }
}

/**
 * The snapshot's name: everything that makes the booted, waiting guest what
 * it is. It starts with a generation (this tsvisor, its waiting init, the
 * image) shared by the snapshots of every shape, so those of an older
 * generation, which no run will use again, can be told apart (pruneSnapshots).
 * A `run --image` snapshot's name then tags the system disk's base build
 * (`sys` and 8 hex digits): once `image pull --force` built another base, a
 * new snapshot removes those made on the old one.
 */
export function snapshotKey(image: string, shape: SnapshotShape): string {
  const generation = sha256hex(JSON.stringify(["tsvisor-fast-start-1", VERSION, image, sha256hex(waitArchive())])).slice(0, 12);
  const parts = [
    generation, shape.cmdline, shape.cpus, shape.memBytes, shape.console, shape.nets, shape.balloon,
    ...(shape.vsockCid === undefined ? [] : [shape.vsockCid]), ...(shape.shares ? [{ shares: shape.shares }] : []),
    ...(shape.system === undefined ? [] : [{ system: shape.system }]),
  ];
  const system = shape.system === undefined ? "" : `sys${sha256hex(shape.system).slice(0, 8)}-`;
  return `${generation}-${system}${sha256hex(JSON.stringify(parts)).slice(0, 24)}`;
}

export function snapshotPath(cacheDir: string, key: string): string {
  return join(cacheDir, "snapshots", `${key}.snap`);
}

/**
 * The working set of snapshot `path`: the pages the first run restored from
 * it read from the file, kept next to it (`KEY.pages`: a magic, then page
 * indices as 32-bit little-endian words). Later runs read those pages ahead
 * at restore, in a few large reads, instead of taking a fault and a read for
 * each (about a thousand pages for `run -- true`).
 */
export function workingSetPath(snapshot: string): string {
  return snapshot.replace(/\.snap$/, "") + ".pages";
}

const WORKING_SET_MAGIC = Buffer.from("TSVPAGE1");

/** The saved working set, or undefined when there is none or it is not one (it is only a hint: the next run saves it again). */
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

export function loadWorkingSet(snapshot: string): Uint32Array | undefined {
  let raw: Buffer;
  try {
    raw = readFileSync(workingSetPath(snapshot));
  } catch {
    return undefined;
  }
  if (raw.length < 8 || (raw.length - 8) % 4 !== 0 || !raw.subarray(0, 8).equals(WORKING_SET_MAGIC)) return undefined;
  const pages = new Uint32Array(raw.length / 4 - 2);
  // One copy when the host is little-endian, as the file is, instead of a call per word.
  if (LITTLE_ENDIAN) new Uint8Array(pages.buffer).set(raw.subarray(8));
  else for (let i = 0; i < pages.length; i++) pages[i] = raw.readUInt32LE(8 + 4 * i);
  return pages;
}

/** Keep the working set of `snapshot` (written under a temporary name, then renamed); a failure only costs later runs their read-ahead. */
export function saveWorkingSet(snapshot: string, pages: Uint32Array): void {
  const path = workingSetPath(snapshot);
  const tmp = `${path}.${process.pid}`;
  try {
    const out = Buffer.alloc(8 + 4 * pages.length);
    WORKING_SET_MAGIC.copy(out);
    for (let i = 0; i < pages.length; i++) out.writeUInt32LE(pages[i], 8 + 4 * i);
    writeFileSync(tmp, out);
    renameSync(tmp, path);
  } catch {
    rmSync(tmp, { force: true });
  }
}

/**
 * Removes the snapshots of other generations than `key`'s (another tsvisor,
 * init or image), and, when `key` has a system disk's tag, those of its
 * generation on another base build: about 70 MB each.
 */
export function pruneSnapshots(dir: string, key: string): void {
  const [generation, second] = key.split("-");
  const system = second?.startsWith("sys") ? `${generation}-${second}-` : undefined;
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return;
  }
  for (const name of names) {
    if (!name.endsWith(".snap") && !name.endsWith(".pages")) continue;
    const stale = !name.startsWith(`${generation}-`) || (system !== undefined && name.startsWith(`${generation}-sys`) && !name.startsWith(system));
    if (stale) rmSync(join(dir, name), { force: true });
  }
}

/** Why this run cannot start from a snapshot, or undefined if it can. */
export function fastStartRefusal(o: { command?: string[]; kernel?: string; initrd?: string; append?: string; disks?: string[]; nets?: string[] }): string | undefined {
  if (!o.command) return "no command (interactive shell)";
  if (o.kernel !== undefined || o.initrd !== undefined) return "--kernel/--initrd";
  if (o.append !== undefined) return "--append";
  if ((o.disks ?? []).length > 0) return "--disk";
  const nets = o.nets ?? [];
  if (nets.length > 1 || (nets.length === 1 && nets[0] !== "user")) return "a --net other than the default user-mode network";
  return undefined;
}

function sha256hex(data: Uint8Array | string): string {
  return createHash("sha256").update(data).digest("hex");
}
