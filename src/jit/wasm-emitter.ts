// A minimal WebAssembly binary writer: just what translated guest code needs
// (WebAssembly core specification 2.0, chapter 5 "Binary Format"): one function
// type per signature, imported shared memory and functions, functions with
// locals, exports. Instructions are appended as bytes through `Code`.

export const I32 = 0x7f;
export const I64 = 0x7e;
export const F64 = 0x7c;
const FUNC_TYPE = 0x60;
const VOID_BLOCK = 0x40;

/** Opcodes used by the translator (spec 5.4). */
export const Op = {
  unreachable: 0x00, block: 0x02, loop: 0x03, if: 0x04, else: 0x05, end: 0x0b,
  br: 0x0c, br_if: 0x0d, br_table: 0x0e, return: 0x0f, call: 0x10, drop: 0x1a, select: 0x1b,
  local_get: 0x20, local_set: 0x21, local_tee: 0x22,
  i32_load: 0x28, i64_load: 0x29, f64_load: 0x2b,
  i64_load8_s: 0x30, i64_load8_u: 0x31, i64_load16_s: 0x32, i64_load16_u: 0x33, i64_load32_s: 0x34, i64_load32_u: 0x35,
  i32_store: 0x36, i64_store: 0x37, f64_store: 0x39, i64_store8: 0x3c, i64_store16: 0x3d, i64_store32: 0x3e,
  i32_const: 0x41, i64_const: 0x42, f64_const: 0x44,
  i32_eqz: 0x45, i32_eq: 0x46, i32_ne: 0x47, i32_lt_s: 0x48, i32_lt_u: 0x49, i32_ge_u: 0x4f,
  i64_eqz: 0x50, i64_eq: 0x51, i64_ne: 0x52, i64_lt_s: 0x53, i64_lt_u: 0x54, i64_gt_s: 0x55, i64_gt_u: 0x56,
  i64_le_s: 0x57, i64_le_u: 0x58, i64_ge_s: 0x59, i64_ge_u: 0x5a,
  f64_eq: 0x61, f64_ne: 0x62, f64_lt: 0x63, f64_le: 0x65,
  i32_clz: 0x67, i32_ctz: 0x68, i32_popcnt: 0x69,
  i32_add: 0x6a, i32_sub: 0x6b, i32_div_s: 0x6d, i32_div_u: 0x6e, i32_rem_s: 0x6f, i32_rem_u: 0x70,
  i32_and: 0x71, i32_or: 0x72, i32_xor: 0x73, i32_shl: 0x74, i32_shr_s: 0x75, i32_shr_u: 0x76, i32_rotl: 0x77, i32_rotr: 0x78,
  i64_clz: 0x79, i64_ctz: 0x7a, i64_popcnt: 0x7b,
  i64_add: 0x7c, i64_sub: 0x7d, i64_mul: 0x7e, i64_div_s: 0x7f, i64_div_u: 0x80, i64_rem_s: 0x81, i64_rem_u: 0x82,
  i64_and: 0x83, i64_or: 0x84, i64_xor: 0x85, i64_shl: 0x86, i64_shr_s: 0x87, i64_shr_u: 0x88, i64_rotl: 0x89, i64_rotr: 0x8a,
  f64_neg: 0x9a, f64_sqrt: 0x9f, f64_add: 0xa0, f64_sub: 0xa1, f64_mul: 0xa2, f64_div: 0xa3,
  i32_wrap_i64: 0xa7, i64_extend_i32_s: 0xac, i64_extend_i32_u: 0xad,
  f64_convert_i32_s: 0xb7, f64_convert_i32_u: 0xb8, f64_convert_i64_s: 0xb9, f64_convert_i64_u: 0xba,
  i64_reinterpret_f64: 0xbd, f64_reinterpret_i64: 0xbf,
  i64_extend8_s: 0xc2, i64_extend16_s: 0xc3, i64_extend32_s: 0xc4,
  /** Prefix of the threads proposal's atomic instructions. */
  atomic_prefix: 0xfe,
} as const;

/** Atomic opcodes after Op.atomic_prefix (threads proposal, "Atomic Memory Accesses"). */
export const AtomicOp = { fence: 0x03, i32_load: 0x10 } as const;

/** Growable byte buffer with the LEB128 encodings of spec 5.2.2. */
export class Bytes {
  private buf = new Uint8Array(256);
  length = 0;

  byte(b: number): this {
    if (this.length === this.buf.length) this.reserve(1);
    this.buf[this.length++] = b;
    return this;
  }

  private reserve(n: number): void {
    if (this.length + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.length + n) size *= 2;
    const grown = new Uint8Array(size);
    grown.set(this.buf.subarray(0, this.length));
    this.buf = grown;
  }

  bytes(bs: ArrayLike<number>): this {
    for (let i = 0; i < bs.length; i++) this.byte(bs[i]);
    return this;
  }

  u32(v: number): this {
    v >>>= 0;
    do {
      let b = v & 0x7f;
      v >>>= 7;
      if (v !== 0) b |= 0x80;
      this.byte(b);
    } while (v !== 0);
    return this;
  }

  s32(v: number): this {
    v |= 0;
    for (;;) {
      const b = v & 0x7f;
      v >>= 7;
      if ((v === 0 && (b & 0x40) === 0) || (v === -1 && (b & 0x40) !== 0)) return this.byte(b);
      this.byte(b | 0x80);
    }
  }

  s64(v: bigint | number): this {
    // Small values (most constants) take the fast number path: their signed
    // LEB128 is the same whatever the width.
    if (typeof v === "number") {
      if (Number.isInteger(v) && v >= -0x80000000 && v <= 0x7fffffff) return this.s32(v);
      v = BigInt(v);
    }
    v = BigInt.asIntN(64, v);
    if (v >= -0x80000000n && v <= 0x7fffffffn) return this.s32(Number(v));
    for (;;) {
      const b = Number(v & 0x7fn);
      v >>= 7n;
      if ((v === 0n && (b & 0x40) === 0) || (v === -1n && (b & 0x40) !== 0)) return this.byte(b);
      this.byte(b | 0x80);
    }
  }

  name(s: string): this {
    const b = new TextEncoder().encode(s);
    return this.u32(b.length).bytes(b);
  }

  /** A length-prefixed copy of `other` (sections, function bodies). */
  sized(other: Bytes): this {
    return this.u32(other.length).append(other);
  }

  append(other: Bytes): this {
    this.reserve(other.length);
    this.buf.set(other.buf.subarray(0, other.length), this.length);
    this.length += other.length;
    return this;
  }

  toUint8Array(): Uint8Array<ArrayBuffer> {
    return this.buf.slice(0, this.length);
  }
}

/** A function body's instruction stream, with helpers for the common shapes. */
export class Code extends Bytes {
  op(o: number): this {
    return this.byte(o);
  }
  i32(v: number): this {
    return this.byte(Op.i32_const).s32(v);
  }
  i64(v: bigint | number): this {
    return this.byte(Op.i64_const).s64(v);
  }
  /** f64.const: the IEEE 754 binary64 bits, little-endian (spec 5.4.7). */
  f64(v: number): this {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setFloat64(0, v, true);
    return this.byte(Op.f64_const).bytes(b);
  }
  get(l: number): this {
    return this.byte(Op.local_get).u32(l);
  }
  set(l: number): this {
    return this.byte(Op.local_set).u32(l);
  }
  tee(l: number): this {
    return this.byte(Op.local_tee).u32(l);
  }
  /** A load or store with its memarg (alignment as log2 of the natural size). */
  mem(o: number, offset: number, alignLog2: number): this {
    return this.byte(o).u32(alignLog2).u32(offset);
  }
  block(): this {
    return this.byte(Op.block).byte(VOID_BLOCK);
  }
  loop(): this {
    return this.byte(Op.loop).byte(VOID_BLOCK);
  }
  if(result?: number): this {
    return this.byte(Op.if).byte(result ?? VOID_BLOCK);
  }
  else(): this {
    return this.byte(Op.else);
  }
  end(): this {
    return this.byte(Op.end);
  }
  br(depth: number): this {
    return this.byte(Op.br).u32(depth);
  }
  call(f: number): this {
    return this.byte(Op.call).u32(f);
  }
  /** i32.atomic.load (sequentially consistent; the address must be 4-aligned). */
  atomicLoad32(offset: number): this {
    return this.byte(Op.atomic_prefix).byte(AtomicOp.i32_load).u32(2).u32(offset);
  }
  /** atomic.fence (a full barrier: MFENCE on x64). */
  fence(): this {
    return this.byte(Op.atomic_prefix).byte(AtomicOp.fence).byte(0);
  }
}

export interface FuncType {
  params: number[];
  results: number[];
}

export interface ImportedFunc {
  module: string;
  name: string;
  type: FuncType;
}

export interface Func {
  type: FuncType;
  /** Locals after the parameters, as [count, valtype] runs. */
  locals: [number, number][];
  code: Code;
  /** Functions without one are internal to the module. */
  exportName?: string;
}

/**
 * A module importing `env.memory` (shared, 32-bit, up to `maxPages`) and the
 * given functions; its own functions are numbered after the imports.
 */
export function encodeModule(imports: ImportedFunc[], funcs: Func[], maxPages: number): Uint8Array<ArrayBuffer> {
  const types: FuncType[] = [];
  const typeIndex = (t: FuncType): number => {
    const i = types.findIndex((u) => u.params.join() === t.params.join() && u.results.join() === t.results.join());
    if (i >= 0) return i;
    types.push(t);
    return types.length - 1;
  };
  const importTypes = imports.map((f) => typeIndex(f.type));
  const funcTypes = funcs.map((f) => typeIndex(f.type));

  const out = new Bytes().bytes([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00]);
  const section = (id: number, body: Bytes) => out.byte(id).sized(body);

  const typeSec = new Bytes().u32(types.length);
  for (const t of types) {
    typeSec.byte(FUNC_TYPE).u32(t.params.length).bytes(t.params).u32(t.results.length).bytes(t.results);
  }
  section(1, typeSec);

  const importSec = new Bytes().u32(imports.length + 1);
  importSec.name("env").name("memory").byte(0x02).byte(0x03).u32(0).u32(maxPages); // shared, min 0, max
  imports.forEach((f, i) => importSec.name(f.module).name(f.name).byte(0x00).u32(importTypes[i]));
  section(2, importSec);

  const funcSec = new Bytes().u32(funcs.length);
  for (const t of funcTypes) funcSec.u32(t);
  section(3, funcSec);

  const exported = funcs.filter((f) => f.exportName !== undefined).length;
  const exportSec = new Bytes().u32(exported);
  funcs.forEach((f, i) => {
    if (f.exportName !== undefined) exportSec.name(f.exportName).byte(0x00).u32(imports.length + i);
  });
  section(7, exportSec);

  const codeSec = new Bytes().u32(funcs.length);
  for (const f of funcs) {
    const body = new Bytes().u32(f.locals.length);
    for (const [n, t] of f.locals) body.u32(n).byte(t);
    body.append(f.code).byte(Op.end);
    codeSec.sized(body);
  }
  section(10, codeSec);
  return out.toUint8Array();
}
