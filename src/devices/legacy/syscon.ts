// The test finisher of QEMU's riscv `virt` machine (compatible "sifive,test0"
// with "syscon"; Linux's syscon-poweroff and syscon-reboot write it). A 32-bit
// write at offset 0 ends the machine:
//   0x5555               pass: power off
//   0x3333 | code << 16  fail with an exit code
//   0x7777               reset (reboot)

import type { MmioDevice } from "../../bus/mmio-bus.js";

export const SYSCON_SIZE = 0x1000n;

export type PowerEvent = { kind: "poweroff" } | { kind: "fail"; code: number } | { kind: "reboot" };

export class Syscon implements MmioDevice {
  readonly name = "syscon";

  constructor(private readonly onEvent: (e: PowerEvent) => void) {}

  read(): bigint {
    return 0n;
  }

  write(offset: number, size: number, value: bigint): void {
    if (offset !== 0 || (size !== 4 && size !== 8)) return;
    const v = Number(value & 0xffff_ffffn);
    const status = v & 0xffff;
    if (status === 0x5555) this.onEvent({ kind: "poweroff" });
    else if (status === 0x3333) this.onEvent({ kind: "fail", code: v >>> 16 });
    else if (status === 0x7777) this.onEvent({ kind: "reboot" });
  }
}
