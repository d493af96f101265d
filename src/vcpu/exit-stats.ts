// VM-exit accounting. A hypervisor's cost is its exits, so the counts are part
// of the public interface (`--stats`, later the API and metrics).

export class ExitStats {
  readonly byReason = new Map<string, number>();
  readonly mmioByDevice = new Map<string, { reads: number; writes: number }>();
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

  /** Human-readable report, one item per line. */
  format(): string {
    const lines = [`instructions executed: ${this.instructions}`, "VM exits by reason:"];
    const reasons = [...this.byReason.entries()].sort((a, b) => b[1] - a[1]);
    for (const [r, n] of reasons) lines.push(`  ${r.padEnd(14)} ${n}`);
    if (this.mmioByDevice.size > 0) {
      lines.push("MMIO exits by device:");
      for (const [d, c] of this.mmioByDevice) lines.push(`  ${d.padEnd(14)} ${c.reads} reads, ${c.writes} writes`);
    }
    return lines.join("\n");
  }
}
