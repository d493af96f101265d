// Progress of a long operation on stderr. On a terminal: one line, rewritten
// in place (cut to the terminal's width) and erased at the end. Elsewhere
// (a pipe, a file, CI=true): a line of its own each time the step changes,
// so a log keeps one line per step rather than one per update.
export class ProgressLine {
  private shown = false;
  private lastStep: string | undefined;

  constructor(
    private readonly out: NodeJS.WriteStream = process.stderr,
    readonly inPlace = out.isTTY === true && !isCi(process.env.CI),
  ) {}

  /** Shows `text`; without a terminal only when `step` differs from the last one shown. */
  update(text: string, step = text): void {
    if (this.inPlace) {
      const width = this.out.columns > 1 ? this.out.columns - 1 : Infinity;
      this.out.write(`\r\x1b[2K${text.length > width ? text.slice(0, width) : text}`);
      this.shown = true;
      return;
    }
    if (step === this.lastStep) return;
    this.lastStep = step;
    this.out.write(`${text}\n`);
  }

  /** The end: the line rewritten in place is erased (the command's own result follows). */
  done(): void {
    if (this.inPlace && this.shown) this.out.write("\r\x1b[2K");
    this.shown = false;
  }
}

const isCi = (v: string | undefined) => v !== undefined && v !== "" && v !== "0" && v.toLowerCase() !== "false";
