// Recognises a Linux kernel panic in the console output. The kernel is booted
// with panic=-1, so a panic ends in an immediate restart request that looks
// exactly like a user's `reboot` at the device; the line the kernel printed
// just before ("Kernel panic - not syncing: ...", kernel/panic.c) is what tells
// them apart, and it is also the message the user needs to see.

const MARKER = "Kernel panic - not syncing";
const MAX_LINE = 512;

export class PanicWatch {
  private line = "";
  /** The panic line, once one was printed. */
  message: string | undefined;

  feed(bytes: Uint8Array): void {
    for (const b of bytes) {
      if (b === 0x0a || b === 0x0d) {
        const at = this.line.indexOf(MARKER);
        if (at >= 0 && this.message === undefined) this.message = this.line.slice(at).trim();
        this.line = "";
      } else if (this.line.length < MAX_LINE) {
        this.line += String.fromCharCode(b);
      }
    }
  }
}
