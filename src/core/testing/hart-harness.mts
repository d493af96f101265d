// A hart on its own memory, for tests of the core without the hypervisor:
// RAM pages mapped 1:1 in the p2m, guest code written at the RAM base.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { join, dirname } from "node:path";

export const RAM_BASE = 0x8000_0000n;

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "..");
let module: WebAssembly.Module | undefined;

export interface TestHart {
  core: any;
  hart: number;
  dv: DataView;
  p2m: number;
  ram: number;
  /** Run at most `budget` instructions; returns the exit reason. */
  run(budget?: number): number;
  /** The run record's fields. */
  rec(name: string): bigint;
  setRec(name: string, v: bigint): void;
  x(i: number): bigint;
  f(i: number): bigint;
  pc(): bigint;
  csr(n: number): bigint;
  writeCode(words: number[], at?: number): void;
}

export function createHart(code: number[] = [], ramPages = 16): TestHart {
  module ??= new WebAssembly.Module(readFileSync(join(root, "build", "core.wasm")));
  const memory = new WebAssembly.Memory({ initial: 64, maximum: 65536, shared: true });
  const core = new WebAssembly.Instance(module, {
    env: { memory, table: new WebAssembly.Table({ element: "anyfunc", initial: 1 }), abort: () => { throw new Error("core abort"); } },
    jit: { compile: () => {} },
  }).exports as any;
  const hart = Math.ceil(Number(core.coreDataEnd()) / 4096) * 4096;
  const p2m = hart + Math.ceil(core.hartStateSize() / 4096) * 4096;
  const ram = p2m + Math.ceil((4 * ramPages) / 4096) * 4096;
  const dv = new DataView(memory.buffer);
  for (let i = 0; i < ramPages; i++) {
    dv.setUint32(p2m + 4 * i, (ram + 4096 * i) | core.P2M_PRESENT.value | core.P2M_WRITABLE.value, true);
  }
  core.hartReset(hart, 0n, RAM_BASE);
  core.setP2m(hart, p2m, RAM_BASE >> 12n, BigInt(ramPages));
  const off = (name: string) => hart + core[name].value;
  const u64 = (v: bigint) => BigInt.asUintN(64, v);
  const t: TestHart = {
    core, hart, dv, p2m, ram,
    run: (budget = 1000) => core.run(hart, budget),
    rec: (name) => dv.getBigUint64(off(name), true),
    setRec: (name, v) => dv.setBigUint64(off(name), v, true),
    // The core's u64 results arrive as signed BigInts (wasm i64).
    x: (i) => u64(core.getX(hart, i)),
    f: (i) => u64(core.getF(hart, i)),
    pc: () => u64(core.getPc(hart)),
    csr: (n) => u64(core.csrRead(hart, n)),
    writeCode: (words, at = 0) => words.forEach((w, i) => dv.setUint32(ram + at + 4 * i, w, true)),
  };
  t.writeCode(code);
  return t;
}
