// The bare-metal ISA suite: every program in tests/isa/<group>/ is built with
// Debian's riscv64 cross gcc and run under `tsvisor run --bare`. A program
// reports through HTIF: exit status 0 is a pass, N means its case N failed.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join, dirname, relative } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const bin = join(root, "bin", "tsvisor.js");
const { buildIsaTests, CC } = await import(pathToFileURL(join(root, "tests", "isa", "build.mjs")).href);
const haveCc = spawnSync(CC, ["--version"]).status === 0;

/** Engine configurations the whole suite runs under: the interpreter alone,
 *  and binary translation forced from the first execution of every block. */
const ENGINES: { name: string; flags: string[] }[] = [
  { name: "interpreter", flags: ["--jit=off"] },
  { name: "jit", flags: ["--jit=on", "--jit-threshold=1"] },
];

const programs: { group: string; name: string; elf: string }[] = haveCc ? buildIsaTests() : [];

test("the ISA suite has programs for every group", { skip: !haveCc && `${CC} not installed` }, () => {
  const groups = new Set(programs.map((p) => p.group));
  for (const g of ["unpriv", "privileged"]) assert.ok(groups.has(g), `no programs in tests/isa/${g}`);
});

for (const engine of ENGINES) {
  for (const p of programs) {
    test(`${engine.name}: ${p.group}/${p.name}`, () => {
      const r = spawnSync(process.execPath, [bin, "run", "--bare", p.elf, "--max-insns", "200000000", ...engine.flags], {
        encoding: "utf8",
        timeout: 120_000,
      });
      const where = relative(root, p.elf);
      assert.equal(r.status, 0, `${where}: ${r.status === 124 ? "ran out of instructions" : `case ${r.status} failed`}\n${r.stdout}${r.stderr}`);
    });
  }
}
