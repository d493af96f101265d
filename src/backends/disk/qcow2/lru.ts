// A bounded least-recently-used cache of metadata clusters (L2 tables and
// refcount blocks), keyed by host offset. tsvisor writes metadata through to
// the file as it changes it, so entries are never dirty and eviction is free.

export class ClusterCache {
  private readonly map = new Map<number, Uint8Array>();

  /** `capacity` clusters at most (at least 2). */
  constructor(readonly capacity: number) {
    if (capacity < 2) this.capacity = 2;
  }

  /** Budgeted in bytes: as many clusters as fit, and at least `min`. */
  static forBudget(budgetBytes: number, clusterSize: number, min = 4): ClusterCache {
    return new ClusterCache(Math.max(min, Math.floor(budgetBytes / clusterSize)));
  }

  get(offset: number): Uint8Array | undefined {
    const c = this.map.get(offset);
    if (c !== undefined) {
      this.map.delete(offset);
      this.map.set(offset, c);
    }
    return c;
  }

  set(offset: number, cluster: Uint8Array): void {
    this.map.delete(offset);
    this.map.set(offset, cluster);
    while (this.map.size > this.capacity) {
      const oldest = this.map.keys().next().value as number;
      this.map.delete(oldest);
    }
  }

  delete(offset: number): void {
    this.map.delete(offset);
  }

  clear(): void {
    this.map.clear();
  }

  get size(): number {
    return this.map.size;
  }
}
