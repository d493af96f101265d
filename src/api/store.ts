// The state directory: one JSON file per VM definition, `<dir>/vms/<name>.json`,
// each written whole or not at all (a temporary file, fsync, rename).
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, openSync, writeSync, fsyncSync, closeSync } from "node:fs";
import { join } from "node:path";
import type { VmDefinition } from "./definition.js";

export class StateStore {
  private readonly dir: string;

  constructor(readonly stateDir: string) {
    this.dir = join(stateDir, "vms");
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
  }

  save(def: VmDefinition): void {
    const file = join(this.dir, `${def.name}.json`);
    const tmp = `${file}.${process.pid}.tmp`;
    const fd = openSync(tmp, "w", 0o600);
    try {
      writeSync(fd, JSON.stringify(def, null, 2) + "\n");
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, file);
    // The rename itself is durable once the directory is synced.
    const dfd = openSync(this.dir, "r");
    try {
      fsyncSync(dfd);
    } finally {
      closeSync(dfd);
    }
  }

  remove(name: string): void {
    rmSync(join(this.dir, `${name}.json`), { force: true });
  }

  /** Every stored definition as parsed JSON (unchecked), with the file it came from; leftover temporaries are removed. */
  load(): { file: string; data: unknown }[] {
    const out: { file: string; data: unknown }[] = [];
    for (const f of readdirSync(this.dir).sort()) {
      const file = join(this.dir, f);
      if (f.endsWith(".tmp")) {
        rmSync(file, { force: true });
        continue;
      }
      if (!f.endsWith(".json")) continue;
      let data: unknown;
      try {
        data = JSON.parse(readFileSync(file, "utf8"));
      } catch (e) {
        data = e instanceof Error ? e : new Error(String(e));
      }
      out.push({ file, data });
    }
    return out;
  }
}
