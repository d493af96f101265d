// The virtio-vsock packet header and its constants (virtio 1.2, 5.10.6
// "Device Operation"): every packet on the rx and tx queues starts with this
// 44-byte little-endian header, followed by `len` payload bytes (RW only).
//
//   src_cid u64 @0, dst_cid u64 @8, src_port u32 @16, dst_port u32 @20,
//   len u32 @24, type u16 @28, op u16 @30, flags u32 @32, buf_alloc u32 @36,
//   fwd_cnt u32 @40
//
// Everything parsed here comes from the guest: parseHeader() only decodes,
// the device (device.ts) decides what each field may be.

export const VSOCK_HDR_SIZE = 44;

/** Well-known CIDs (5.10.4): the host is 2; a guest's is 3 or more. */
export const VSOCK_HOST_CID = 2n;
export const VSOCK_MIN_GUEST_CID = 3n;
/** CIDs are 32-bit in Linux (the config field is u64, its upper half reserved). */
export const VSOCK_MAX_GUEST_CID = 0xffff_fffen;

/** Feature bits (5.10.3). Only stream sockets: VIRTIO_VSOCK_F_SEQPACKET (1) is not offered. */
export const VIRTIO_VSOCK_F_STREAM = 1n << 0n;

export const VSOCK_TYPE_STREAM = 1;
export const VSOCK_TYPE_SEQPACKET = 2;

export const VSOCK_OP_INVALID = 0;
export const VSOCK_OP_REQUEST = 1;
export const VSOCK_OP_RESPONSE = 2;
export const VSOCK_OP_RST = 3;
export const VSOCK_OP_SHUTDOWN = 4;
export const VSOCK_OP_RW = 5;
export const VSOCK_OP_CREDIT_UPDATE = 6;
export const VSOCK_OP_CREDIT_REQUEST = 7;

/** SHUTDOWN flags (5.10.6.5): the sender will receive no more / send no more. */
export const VSOCK_SHUTDOWN_RCV = 1;
export const VSOCK_SHUTDOWN_SEND = 2;
export const VSOCK_SHUTDOWN_BOTH = VSOCK_SHUTDOWN_RCV | VSOCK_SHUTDOWN_SEND;

/** The event queue's only event (5.10.6.7): all connections are gone (after a restore or migration). */
export const VSOCK_EVENT_TRANSPORT_RESET = 0;
export const VSOCK_EVENT_SIZE = 4;

/**
 * The largest payload of one packet, either way: Linux's
 * VIRTIO_VSOCK_MAX_PKT_BUF_SIZE. A guest packet announcing more is dropped
 * (with an RST for its connection), so one tx chain never makes the host
 * copy more than this.
 */
export const VSOCK_MAX_PAYLOAD = 64 << 10;

export interface VsockHeader {
  srcCid: bigint;
  dstCid: bigint;
  srcPort: number;
  dstPort: number;
  len: number;
  type: number;
  op: number;
  flags: number;
  bufAlloc: number;
  fwdCnt: number;
}

export function parseHeader(b: Uint8Array): VsockHeader {
  if (b.length < VSOCK_HDR_SIZE) throw new RangeError(`vsock header: ${b.length} bytes, need ${VSOCK_HDR_SIZE}`);
  const dv = new DataView(b.buffer, b.byteOffset, VSOCK_HDR_SIZE);
  return {
    srcCid: dv.getBigUint64(0, true),
    dstCid: dv.getBigUint64(8, true),
    srcPort: dv.getUint32(16, true),
    dstPort: dv.getUint32(20, true),
    len: dv.getUint32(24, true),
    type: dv.getUint16(28, true),
    op: dv.getUint16(30, true),
    flags: dv.getUint32(32, true),
    bufAlloc: dv.getUint32(36, true),
    fwdCnt: dv.getUint32(40, true),
  };
}

export function encodeHeader(h: VsockHeader): Uint8Array {
  const b = new Uint8Array(VSOCK_HDR_SIZE);
  const dv = new DataView(b.buffer);
  dv.setBigUint64(0, BigInt.asUintN(64, h.srcCid), true);
  dv.setBigUint64(8, BigInt.asUintN(64, h.dstCid), true);
  dv.setUint32(16, h.srcPort >>> 0, true);
  dv.setUint32(20, h.dstPort >>> 0, true);
  dv.setUint32(24, h.len >>> 0, true);
  dv.setUint16(28, h.type & 0xffff, true);
  dv.setUint16(30, h.op & 0xffff, true);
  dv.setUint32(32, h.flags >>> 0, true);
  dv.setUint32(36, h.bufAlloc >>> 0, true);
  dv.setUint32(40, h.fwdCnt >>> 0, true);
  return b;
}

export function opName(op: number): string {
  return ["INVALID", "REQUEST", "RESPONSE", "RST", "SHUTDOWN", "RW", "CREDIT_UPDATE", "CREDIT_REQUEST"][op] ?? `op ${op}`;
}
