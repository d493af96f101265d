// The memory map of tsvisor's `virt` machine: QEMU's riscv `virt` layout
// (hw/riscv/virt.c), so stock kernels find their devices where they expect.
//
//   0x0000_0000 ┌──────────────────────────┐
//               │ (unmapped)               │
//   0x0010_0000 ├──────────────────────────┤ test / syscon finisher  4 KiB
//   0x0010_1000 ├──────────────────────────┤ goldfish RTC  irq 11    4 KiB
//   0x0010_2000 ├──────────────────────────┤ VM generation ID irq 12 16 B (tsvisor's; QEMU's virt has none)
//   0x0200_0000 ├──────────────────────────┤ CLINT / ACLINT          64 KiB
//   0x0c00_0000 ├──────────────────────────┤ PLIC (2 contexts / hart)
//   0x1000_0000 ├──────────────────────────┤ UART 16550A  irq 10     256 B
//   0x1000_1000 ├──────────────────────────┤ virtio-mmio slot 0..7, irqs 1..8, 4 KiB each
//   0x1000_9000 ├──────────────────────────┤ (unmapped)
//   0x8000_0000 ├──────────────────────────┤ RAM (--mem)
//               └──────────────────────────┘

export const VIRT_TEST_BASE = 0x0010_0000n;
export const VIRT_TEST_SIZE = 0x1000n;
export const VIRT_RTC_BASE = 0x0010_1000n;
export const VIRT_RTC_SIZE = 0x1000n;
export const VIRT_RTC_IRQ = 11;
/** VMGenID (devices/legacy/vmgenid.ts): where QEMU's virt has a hole, with the next free PLIC source. */
export const VIRT_VMGENID_BASE = 0x0010_2000n;
export const VIRT_VMGENID_SIZE = 0x10n;
export const VIRT_VMGENID_IRQ = 12;
export const VIRT_CLINT_BASE = 0x0200_0000n;
export const VIRT_CLINT_SIZE = 0x1_0000n;
export const VIRT_PLIC_BASE = 0x0c00_0000n;
export const VIRT_UART_BASE = 0x1000_0000n;
export const VIRT_UART_SIZE = 0x100n;
export const VIRT_UART_IRQ = 10;
/** The UART's input clock as QEMU's virt advertises it (3.6864 MHz). */
export const VIRT_UART_CLOCK_HZ = 3_686_400;
export const VIRT_VIRTIO_BASE = 0x1000_1000n;
export const VIRT_VIRTIO_STRIDE = 0x1000n;
export const VIRT_VIRTIO_SLOTS = 8;
export const VIRT_VIRTIO_IRQ_BASE = 1;
export const VIRT_RAM_BASE = 0x8000_0000n;
/** The ACLINT timer's frequency (QEMU's default timebase, 10 MHz). */
export const VIRT_TIMEBASE_HZ = 10_000_000;
export const VIRT_MAX_HARTS = 8;

export function virtioSlotBase(slot: number): bigint {
  return VIRT_VIRTIO_BASE + BigInt(slot) * VIRT_VIRTIO_STRIDE;
}
