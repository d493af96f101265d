// The device tree of the `virt` machine, generated from its configuration, as
// QEMU's riscv `virt` machine describes itself to Linux (bindings from the
// Linux kernel's Documentation/devicetree/bindings: riscv/cpus.yaml,
// interrupt-controller/sifive,plic-1.0.0.yaml, timer/sifive,clint.yaml,
// serial/8250.yaml, rtc/google,goldfish-rtc, rng/microsoft,vmgenid, power/reset/syscon-*.yaml,
// virtio/mmio.yaml).

import { node, u32, u64, str, empty, writeFdt, type FdtNode } from "./fdt.js";
import * as L from "./layout.js";
import { HART_ISA_BASE, HART_ISA_EXTENSIONS, HART_MMU_TYPE, isaString } from "./isa.js";
import { plicSize, PLIC_NUM_SOURCES } from "../../devices/irq/plic.js";

export interface VirtFdtConfig {
  harts: number;
  ramSize: bigint;
  bootargs: string;
  initrd?: { start: bigint; end: bigint };
  /** virtio-mmio slots in use (0..7). */
  virtioSlots: number[];
}

const IRQ_M_SOFT = 3, IRQ_M_TIMER = 7, IRQ_S_EXT = 9, IRQ_M_EXT = 11;
const hi = (v: bigint) => Number(v >> 32n);
const lo = (v: bigint) => Number(v & 0xffff_ffffn);
/** A reg entry in the 2-cell address / 2-cell size convention of /soc. */
const reg = (base: bigint, size: bigint) => u32(hi(base), lo(base), hi(size), lo(size));

export function virtFdt(cfg: VirtFdtConfig): Uint8Array {
  if (cfg.harts < 1 || cfg.harts > L.VIRT_MAX_HARTS) throw new RangeError(`harts must be 1..${L.VIRT_MAX_HARTS}`);
  // phandles: 1..harts for the harts' interrupt controllers, then the devices.
  const intc = (h: number) => 1 + h;
  const PLIC_PHANDLE = cfg.harts + 1;
  const TEST_PHANDLE = cfg.harts + 2;

  const cpus: FdtNode[] = [];
  for (let h = 0; h < cfg.harts; h++) {
    cpus.push(node(`cpu@${h}`, {
      device_type: str("cpu"),
      reg: u32(h),
      status: str("okay"),
      compatible: str("riscv"),
      "riscv,isa": str(isaString()),
      "riscv,isa-base": str(HART_ISA_BASE),
      "riscv,isa-extensions": str(...HART_ISA_EXTENSIONS),
      "mmu-type": str(HART_MMU_TYPE),
    }, [node("interrupt-controller", {
      "#interrupt-cells": u32(1),
      "interrupt-controller": empty(),
      compatible: str("riscv,cpu-intc"),
      phandle: u32(intc(h)),
    })]));
  }
  const perHart = (irqs: number[]) => {
    const cells: number[] = [];
    for (let h = 0; h < cfg.harts; h++) for (const irq of irqs) cells.push(intc(h), irq);
    return u32(...cells);
  };

  const chosen: Record<string, ReturnType<typeof str>> = {
    bootargs: str(cfg.bootargs),
    "stdout-path": str(`/soc/serial@${L.VIRT_UART_BASE.toString(16)}`),
  };
  if (cfg.initrd) {
    chosen["linux,initrd-start"] = u64(cfg.initrd.start);
    chosen["linux,initrd-end"] = u64(cfg.initrd.end);
  }

  const devices: FdtNode[] = [
    node(`test@${L.VIRT_TEST_BASE.toString(16)}`, {
      compatible: str("sifive,test1", "sifive,test0", "syscon"),
      reg: reg(L.VIRT_TEST_BASE, L.VIRT_TEST_SIZE),
      phandle: u32(TEST_PHANDLE),
    }),
    node("poweroff", { compatible: str("syscon-poweroff"), regmap: u32(TEST_PHANDLE), offset: u32(0), value: u32(0x5555) }),
    node("reboot", { compatible: str("syscon-reboot"), regmap: u32(TEST_PHANDLE), offset: u32(0), value: u32(0x7777) }),
    node(`rtc@${L.VIRT_RTC_BASE.toString(16)}`, {
      compatible: str("google,goldfish-rtc"),
      reg: reg(L.VIRT_RTC_BASE, L.VIRT_RTC_SIZE),
      "interrupt-parent": u32(PLIC_PHANDLE),
      interrupts: u32(L.VIRT_RTC_IRQ),
    }),
    // Linux reseeds its RNG when this ID changes (a restore, a clone).
    node(`vmgenid@${L.VIRT_VMGENID_BASE.toString(16)}`, {
      compatible: str("microsoft,vmgenid"),
      reg: reg(L.VIRT_VMGENID_BASE, L.VIRT_VMGENID_SIZE),
      "interrupt-parent": u32(PLIC_PHANDLE),
      interrupts: u32(L.VIRT_VMGENID_IRQ),
    }),
    node(`clint@${L.VIRT_CLINT_BASE.toString(16)}`, {
      compatible: str("sifive,clint0", "riscv,clint0"),
      reg: reg(L.VIRT_CLINT_BASE, L.VIRT_CLINT_SIZE),
      "interrupts-extended": perHart([IRQ_M_SOFT, IRQ_M_TIMER]),
    }),
    node(`plic@${L.VIRT_PLIC_BASE.toString(16)}`, {
      compatible: str("sifive,plic-1.0.0", "riscv,plic0"),
      reg: reg(L.VIRT_PLIC_BASE, plicSize(cfg.harts)),
      "#interrupt-cells": u32(1),
      "#address-cells": u32(0),
      "interrupt-controller": empty(),
      "riscv,ndev": u32(PLIC_NUM_SOURCES),
      // Context order matches the PLIC model: M then S for each hart.
      "interrupts-extended": perHart([IRQ_M_EXT, IRQ_S_EXT]),
      phandle: u32(PLIC_PHANDLE),
    }),
    node(`serial@${L.VIRT_UART_BASE.toString(16)}`, {
      compatible: str("ns16550a"),
      reg: reg(L.VIRT_UART_BASE, L.VIRT_UART_SIZE),
      "clock-frequency": u32(L.VIRT_UART_CLOCK_HZ),
      "interrupt-parent": u32(PLIC_PHANDLE),
      interrupts: u32(L.VIRT_UART_IRQ),
    }),
    ...cfg.virtioSlots.map((slot) => {
      if (slot < 0 || slot >= L.VIRT_VIRTIO_SLOTS) throw new RangeError(`virtio slot ${slot} out of range`);
      const base = L.virtioSlotBase(slot);
      return node(`virtio_mmio@${base.toString(16)}`, {
        compatible: str("virtio,mmio"),
        reg: reg(base, L.VIRT_VIRTIO_STRIDE),
        "interrupt-parent": u32(PLIC_PHANDLE),
        interrupts: u32(L.VIRT_VIRTIO_IRQ_BASE + slot),
      });
    }),
  ];

  const root = node("", {
    "#address-cells": u32(2),
    "#size-cells": u32(2),
    compatible: str("riscv-virtio"),
    model: str("tsvisor,virt"),
  }, [
    node("chosen", chosen),
    node(`memory@${L.VIRT_RAM_BASE.toString(16)}`, { device_type: str("memory"), reg: reg(L.VIRT_RAM_BASE, cfg.ramSize) }),
    node("cpus", { "#address-cells": u32(1), "#size-cells": u32(0), "timebase-frequency": u32(L.VIRT_TIMEBASE_HZ) }, cpus),
    node("soc", { "#address-cells": u32(2), "#size-cells": u32(2), compatible: str("simple-bus"), ranges: empty() }, devices),
  ]);
  return writeFdt(root);
}
