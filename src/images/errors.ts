// The one error type of the image code (cpio writer, module index, Debian
// pull, initramfs). Its message is a single line meant for the user as is:
// the CLI prints `message` and exits non-zero, never a stack trace.

export class ImageError extends Error {
  constructor(message: string) {
    // Tools' output (apt, xz) can carry newlines and trailing blanks; keep one line.
    super(message.replace(/\s*\n\s*/g, " ").trim());
    this.name = "ImageError";
  }
}
