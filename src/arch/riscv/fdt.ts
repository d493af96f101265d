// Flattened device tree (DTB) writer, per the Devicetree Specification v0.4,
// chapter 5 "Flattened Devicetree (DTB) Format": a header, an (empty) memory
// reservation block, the structure block (FDT_BEGIN_NODE / FDT_PROP /
// FDT_END_NODE tokens, big-endian, 4-byte aligned) and the strings block with
// each property name stored once.

export type PropValue =
  | { kind: "empty" }
  | { kind: "u32"; values: number[] }
  | { kind: "u64"; values: bigint[] }
  | { kind: "string"; values: string[] }
  | { kind: "bytes"; bytes: Uint8Array };

export interface FdtNode {
  name: string;
  props: [string, PropValue][];
  children: FdtNode[];
}

// Value constructors, so a tree reads like a .dts file.
export const empty = (): PropValue => ({ kind: "empty" });
export const u32 = (...values: number[]): PropValue => ({ kind: "u32", values });
export const u64 = (...values: bigint[]): PropValue => ({ kind: "u64", values });
export const str = (...values: string[]): PropValue => ({ kind: "string", values });
export const bytes = (b: Uint8Array): PropValue => ({ kind: "bytes", bytes: b });

export function node(name: string, props: Record<string, PropValue> = {}, children: FdtNode[] = []): FdtNode {
  return { name, props: Object.entries(props), children };
}

const FDT_MAGIC = 0xd00dfeed;
const FDT_BEGIN_NODE = 1;
const FDT_END_NODE = 2;
const FDT_PROP = 3;
const FDT_END = 9;
const VERSION = 17;
const LAST_COMP_VERSION = 16;
const HEADER_SIZE = 40;

/** A big-endian byte builder. */
class Out {
  private buf = new Uint8Array(4096);
  len = 0;
  private grow(n: number) {
    if (this.len + n <= this.buf.length) return;
    const b = new Uint8Array(Math.max(this.buf.length * 2, this.len + n));
    b.set(this.buf.subarray(0, this.len));
    this.buf = b;
  }
  u32(v: number) {
    this.grow(4);
    new DataView(this.buf.buffer).setUint32(this.len, v >>> 0);
    this.len += 4;
  }
  bytes(b: Uint8Array) {
    this.grow(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
  }
  align4() {
    while (this.len % 4) this.bytes(Uint8Array.of(0));
  }
  result() {
    return this.buf.slice(0, this.len);
  }
}

function encodeValue(v: PropValue): Uint8Array {
  switch (v.kind) {
    case "empty": return new Uint8Array(0);
    case "u32": {
      const b = new Uint8Array(4 * v.values.length);
      v.values.forEach((x, i) => new DataView(b.buffer).setUint32(4 * i, x >>> 0));
      return b;
    }
    case "u64": {
      const b = new Uint8Array(8 * v.values.length);
      v.values.forEach((x, i) => new DataView(b.buffer).setBigUint64(8 * i, BigInt.asUintN(64, x)));
      return b;
    }
    case "string": {
      const parts = v.values.map((s) => new TextEncoder().encode(s + "\0"));
      const b = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
      let o = 0;
      for (const p of parts) { b.set(p, o); o += p.length; }
      return b;
    }
    case "bytes": return v.bytes;
  }
}

/** Serialise `root` (named "") to a DTB for the boot CPU `bootCpu`. */
export function writeFdt(root: FdtNode, bootCpu = 0): Uint8Array {
  const struct = new Out();
  const strings = new Out();
  const stringOffsets = new Map<string, number>();
  const nameOffset = (name: string) => {
    let off = stringOffsets.get(name);
    if (off === undefined) {
      off = strings.len;
      strings.bytes(new TextEncoder().encode(name + "\0"));
      stringOffsets.set(name, off);
    }
    return off;
  };
  const emit = (n: FdtNode) => {
    struct.u32(FDT_BEGIN_NODE);
    struct.bytes(new TextEncoder().encode(n.name + "\0"));
    struct.align4();
    for (const [name, value] of n.props) {
      const data = encodeValue(value);
      struct.u32(FDT_PROP);
      struct.u32(data.length);
      struct.u32(nameOffset(name));
      struct.bytes(data);
      struct.align4();
    }
    for (const c of n.children) emit(c);
    struct.u32(FDT_END_NODE);
  };
  emit(root);
  struct.u32(FDT_END);

  // Layout: header, memory reservation block (one terminating all-zero entry,
  // 8-byte aligned), structure block, strings block.
  const rsvOff = HEADER_SIZE;
  const rsvSize = 16;
  const structOff = rsvOff + rsvSize;
  const structBytes = struct.result();
  const stringsOff = structOff + structBytes.length;
  const stringBytes = strings.result();
  const total = stringsOff + stringBytes.length;
  const out = new Uint8Array(total);
  const dv = new DataView(out.buffer);
  const header = [FDT_MAGIC, total, structOff, stringsOff, rsvOff, VERSION, LAST_COMP_VERSION, bootCpu, stringBytes.length, structBytes.length];
  header.forEach((v, i) => dv.setUint32(4 * i, v));
  out.set(structBytes, structOff);
  out.set(stringBytes, stringsOff);
  return out;
}
