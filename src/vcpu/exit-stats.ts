// VM-exit accounting. A hypervisor's cost is its exits, so the counts are part
// of the public interface (`--stats`, later the API and metrics).

export class ExitStats {
  readonly byReason = new Map<string, number>();
  readonly mmioByDevice = new Map<string, { reads: number; writes: number }>();
  readonly sbiByExtension = new Map<string, number>();
  instructions = 0n;

  count(reason: string): void {
    this.byReason.set(reason, (this.byReason.get(reason) ?? 0) + 1);
  }

  countMmio(device: string, write: boolean): void {
    let d = this.mmioByDevice.get(device);
    if (!d) this.mmioByDevice.set(device, (d = { reads: 0, writes: 0 }));
    if (write) d.writes++;
    else d.reads++;
  }

  countSbi(extension: string, n = 1): void {
    this.sbiByExtension.set(extension, (this.sbiByExtension.get(extension) ?? 0) + n);
  }

  /** Fold another vCPU's counts into these. */
  add(other: ExitStats): void {
    this.instructions += other.instructions;
    for (const [r, n] of other.byReason) this.byReason.set(r, (this.byReason.get(r) ?? 0) + n);
    for (const [d, c] of other.mmioByDevice) {
      const mine = this.mmioByDevice.get(d) ?? { reads: 0, writes: 0 };
      this.mmioByDevice.set(d, { reads: mine.reads + c.reads, writes: mine.writes + c.writes });
    }
    for (const [e, n] of other.sbiByExtension) this.countSbi(e, n);
  }

  /** Human-readable report, one item per line. */
  format(): string {
    const lines = [`instructions executed: ${this.instructions}`, "VM exits by reason:"];
    const reasons = [...this.byReason.entries()].sort((a, b) => b[1] - a[1]);
    for (const [r, n] of reasons) lines.push(`  ${r.padEnd(14)} ${n}`);
    if (this.mmioByDevice.size > 0) {
      lines.push("MMIO exits by device:");
      for (const [d, c] of this.mmioByDevice) lines.push(`  ${d.padEnd(14)} ${c.reads} reads, ${c.writes} writes`);
    }
    if (this.sbiByExtension.size > 0) {
      lines.push("SBI calls by extension:");
      for (const [e, n] of [...this.sbiByExtension].sort((a, b) => b[1] - a[1])) lines.push(`  ${e.padEnd(14)} ${n}`);
    }
    return lines.join("\n");
  }
}
