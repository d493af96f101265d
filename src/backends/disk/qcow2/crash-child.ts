// The process the crash test (crash.test.ts) kills: it opens an image and
// runs crashOps(seed) on it forever, saying on stdout, synchronously, which
// operation it starts ("S n") and which flush completed ("F n"), so the test
// knows what must have survived the SIGKILL.
//   node crash-child.js IMAGE SEED

import { writeSync } from "node:fs";
import { openDisk } from "../disk.js";
import { crashOps } from "../testing.js";

const [image, seedText] = process.argv.slice(2);
const disk = openDisk(image, { format: "qcow2" });
writeSync(1, "ready\n");
let n = 0;
for (const op of crashOps(Number(seedText), disk.virtualSize)) {
  writeSync(1, `S ${n}\n`);
  if (op.kind === "write") disk.write(op.offset, op.data);
  else if (op.kind === "zero") disk.writeZeroes(op.offset, op.length, op.mayUnmap);
  else if (op.kind === "discard") disk.discard(op.offset, op.length);
  else {
    disk.flush();
    writeSync(1, `F ${n}\n`);
  }
  n++;
}
