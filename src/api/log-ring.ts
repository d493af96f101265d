// A VM's console output as the host keeps it: the last `limit` bytes, and
// followers that get every new chunk (`vm logs -f`).

export class LogRing {
  private chunks: Uint8Array[] = [];
  private size = 0;
  private readonly followers = new Set<(chunk: Uint8Array | null) => void>();

  constructor(readonly limit = 1 << 20) {}

  append(bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    const copy = bytes.slice(); // the caller may reuse its buffer
    this.chunks.push(copy);
    this.size += copy.length;
    while (this.size - this.chunks[0].length >= this.limit) this.size -= this.chunks.shift()!.length;
    for (const f of this.followers) f(copy);
  }

  /** The kept output, at most `limit` bytes (the oldest dropped). */
  contents(): Buffer {
    const all = Buffer.concat(this.chunks);
    return all.length > this.limit ? all.subarray(all.length - this.limit) : all;
  }

  /** Calls `f` with each new chunk, and with null when the run ends; returns the unsubscribe. */
  follow(f: (chunk: Uint8Array | null) => void): () => void {
    this.followers.add(f);
    return () => this.followers.delete(f);
  }

  /** The run ended: followers get null and are dropped. */
  endFollowers(): void {
    for (const f of this.followers) f(null);
    this.followers.clear();
  }
}
