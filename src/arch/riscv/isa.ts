// What the tsvisor hart implements, named as the device tree describes it
// (riscv,isa and riscv,isa-extensions, per the Linux RISC-V ISA bindings), so
// the guest is told exactly what the core (src/core) does: no more, no less.

export const HART_ISA_BASE = "rv64i";
export const HART_ISA_EXTENSIONS = [
  "i", "m", "a", "f", "d", "c",
  "zicntr", "zicsr", "zifencei", "zihintpause",
  "zba", "zbb", "zbs",
  "sstc",
];
/** The widest translation mode: Sv57 (Sv39 and Sv48 are implied). */
export const HART_MMU_TYPE = "riscv,sv57";

/** The riscv,isa string: single-letter extensions, then the rest joined by "_". */
export function isaString(extensions = HART_ISA_EXTENSIONS): string {
  const single = extensions.filter((e) => e.length === 1 && e !== "i").join("");
  const multi = extensions.filter((e) => e.length > 1);
  return ["rv64i" + single, ...multi].join("_");
}
