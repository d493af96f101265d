// The bytes a TCP sender keeps: everything from SND.UNA on, acknowledged bytes
// dropped from the front, host data appended at the back. Chunks are kept as
// the host socket delivered them, so appending never copies.

export class ByteQueue {
  private chunks: Uint8Array[] = [];
  /** Bytes of chunks[0] already consumed. */
  private headOffset = 0;
  private bytes = 0;

  get length(): number {
    return this.bytes;
  }

  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.bytes += chunk.length;
  }

  /** Drops `n` bytes (at most all of them) from the front; returns how many it dropped. */
  consume(n: number): number {
    n = Math.min(n, this.bytes);
    const dropped = n;
    this.bytes -= n;
    while (n > 0) {
      const first = this.chunks[0];
      const left = first.length - this.headOffset;
      if (n < left) {
        this.headOffset += n;
        return dropped;
      }
      n -= left;
      this.chunks.shift();
      this.headOffset = 0;
    }
    return dropped;
  }

  /** `length` bytes from `offset` (the caller keeps within the queue): a view when one chunk holds them, else a copy. */
  slice(offset: number, length: number): Uint8Array {
    let i = 0;
    let at = offset + this.headOffset;
    while (at >= this.chunks[i].length) {
      at -= this.chunks[i].length;
      i++;
    }
    if (at + length <= this.chunks[i].length) return this.chunks[i].subarray(at, at + length);
    const out = new Uint8Array(length);
    let filled = 0;
    while (filled < length) {
      const part = this.chunks[i].subarray(at, at + (length - filled));
      out.set(part, filled);
      filled += part.length;
      at = 0;
      i++;
    }
    return out;
  }

  clear(): void {
    this.chunks = [];
    this.headOffset = 0;
    this.bytes = 0;
  }
}
