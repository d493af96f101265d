// The virtio-mmio register offsets (virtio 1.2, 4.2.2) and InterruptStatus
// bits, in a module of their own: besides the transport (mmio.ts), threads
// that never load the device models answer a few of these registers
// themselves (a vCPU's worker: QueueNotify, InterruptStatus, InterruptACK;
// a disk's I/O thread raises InterruptStatus, host/irqfd.ts).

export const REG = {
  MagicValue: 0x000, Version: 0x004, DeviceID: 0x008, VendorID: 0x00c,
  DeviceFeatures: 0x010, DeviceFeaturesSel: 0x014, DriverFeatures: 0x020, DriverFeaturesSel: 0x024,
  QueueSel: 0x030, QueueNumMax: 0x034, QueueNum: 0x038, QueueReady: 0x044, QueueNotify: 0x050,
  InterruptStatus: 0x060, InterruptACK: 0x064, Status: 0x070,
  QueueDescLow: 0x080, QueueDescHigh: 0x084, QueueDriverLow: 0x090, QueueDriverHigh: 0x094,
  QueueDeviceLow: 0x0a0, QueueDeviceHigh: 0x0a4,
  SHMSel: 0x0ac, SHMLenLow: 0x0b0, SHMLenHigh: 0x0b4, SHMBaseLow: 0x0b8, SHMBaseHigh: 0x0bc,
  ConfigGeneration: 0x0fc, Config: 0x100,
} as const;

/** InterruptStatus bits (4.2.2). */
export const INT_USED_BUFFER = 1;
export const INT_CONFIG_CHANGE = 2;
