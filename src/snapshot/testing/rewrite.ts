// For tests: a copy of a snapshot with its meta and machine state edited and
// the checksums made right again, so only the checks on values stand in the
// way of a restore (tampering as a user with a text editor would).
import { SnapshotFile, SnapshotWriter } from "../format.js";
import type { Plain } from "../state.js";

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Editable = Record<string, any>;

export async function rewriteSnapshot(from: string, to: string, edit: (machine: Editable, meta: Editable) => void): Promise<void> {
  const f = SnapshotFile.open(from);
  try {
    const meta = f.json("meta") as Editable;
    const machine = f.json("machine") as Editable;
    edit(machine, meta);
    const w = await SnapshotWriter.create(to);
    await w.json("meta", meta as Plain);
    await w.json("machine", machine as Plain);
    const pages = f.section("pages");
    const s = w.begin("pages", true);
    await w.write(f.read(pages.offset, pages.length));
    w.end(s);
    await w.binary("pagemap", f.binary("pagemap", 1 << 30));
    await w.finish();
  } finally {
    f.close();
  }
}
