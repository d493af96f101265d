// Device and machine state as plain data (DESIGN.md: "Every piece of VM state
// ... can be saved as plain, versioned data and restored after validation as
// untrusted input; wiring (callbacks, host handles) is rebuilt on restore,
// never saved").
//
// A device saves a Plain value (JSON-shaped: numbers, strings, booleans,
// arrays, objects); 64-bit values travel as "0x..." strings and byte arrays as
// base64. On restore it reads that value back through a StateReader, whose
// every getter checks type and range and throws SnapshotError naming the
// field ("uart.ier: expected an integer 0..15, got 300"), so a tampered or
// corrupted snapshot is refused with one line, never half-applied garbage.
//
//   saveState(): Plain { return { ier: this.ier, rx: bytes(Uint8Array.from(this.rx)) }; }
//   restoreState(r: StateReader): void { this.ier = r.int("ier", 0, 15); this.rx = [...r.bytes("rx", 16)]; }

/** A snapshot cannot be used: corrupted, tampered, from another version or machine. */
export class SnapshotError extends Error {
  override readonly name: string = "SnapshotError";
}

/** A device cannot save its state now (what the guest holds could not be restored): try again later. */
export class SnapshotRefused extends SnapshotError {
  override readonly name = "SnapshotRefused";
}

export type Plain = null | boolean | number | string | readonly Plain[] | { readonly [key: string]: Plain };

/** A u64 (or any bigint >= 0) as plain data. */
export function u64(v: bigint): string {
  return `0x${BigInt.asUintN(64, v).toString(16)}`;
}

/** Bytes as plain data (base64). */
export function bytes(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("base64");
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;
const HEX64 = /^0x[0-9a-f]{1,16}$/;

/** Untrusted plain state, read field by field with checks. */
export class StateReader {
  constructor(private readonly value: unknown, readonly path: string) {}

  /** The whole value is an object (most device states are). */
  private object(): Record<string, unknown> {
    const v = this.value;
    if (typeof v !== "object" || v === null || Array.isArray(v)) this.fail("", "expected an object");
    return v as Record<string, unknown>;
  }

  private field(key: string): unknown {
    const o = this.object();
    if (!Object.prototype.hasOwnProperty.call(o, key)) this.fail(key, "missing");
    return o[key];
  }

  private fail(key: string, what: string): never {
    throw new SnapshotError(`${key ? `${this.path}.${key}` : this.path}: ${what}`);
  }

  has(key: string): boolean {
    return Object.prototype.hasOwnProperty.call(this.object(), key);
  }

  /** A nested object. */
  obj(key: string): StateReader {
    const r = new StateReader(this.field(key), `${this.path}.${key}`);
    r.object();
    return r;
  }

  /** An integer in [min, max]. */
  int(key: string, min: number, max: number): number {
    const v = this.field(key);
    if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) this.fail(key, `expected an integer ${min}..${max}, got ${show(v)}`);
    return v;
  }

  /** A number (counters, times) that is finite and at least `min`. */
  num(key: string, min = 0): number {
    const v = this.field(key);
    if (typeof v !== "number" || !Number.isFinite(v) || v < min) this.fail(key, `expected a number >= ${min}, got ${show(v)}`);
    return v;
  }

  bool(key: string): boolean {
    const v = this.field(key);
    if (typeof v !== "boolean") this.fail(key, `expected true or false, got ${show(v)}`);
    return v;
  }

  /** A 64-bit value saved with u64(), at most `max`. */
  u64(key: string, max = (1n << 64n) - 1n): bigint {
    const v = this.field(key);
    if (typeof v !== "string" || !HEX64.test(v)) this.fail(key, `expected a 64-bit hex value, got ${show(v)}`);
    const n = BigInt(v);
    if (n > max) this.fail(key, `0x${n.toString(16)} is above the largest allowed, 0x${max.toString(16)}`);
    return n;
  }

  str(key: string, maxLength = 4096): string {
    const v = this.field(key);
    if (typeof v !== "string" || v.length > maxLength) this.fail(key, `expected a string of at most ${maxLength} characters`);
    return v;
  }

  /** One of `choices`. */
  oneOf<T extends string>(key: string, choices: readonly T[]): T {
    const v = this.field(key);
    if (typeof v !== "string" || !choices.includes(v as T)) this.fail(key, `expected one of ${choices.join(", ")}, got ${show(v)}`);
    return v as T;
  }

  /** Bytes saved with bytes(), at most `maxLength` of them. */
  bytes(key: string, maxLength: number): Uint8Array {
    const v = this.field(key);
    if (typeof v !== "string" || !BASE64.test(v) || v.length % 4 !== 0) this.fail(key, "expected base64 bytes");
    if ((v.length / 4) * 3 > maxLength + 2) this.fail(key, `more than ${maxLength} bytes`);
    const b = new Uint8Array(Buffer.from(v, "base64"));
    if (b.length > maxLength) this.fail(key, `${b.length} bytes, at most ${maxLength} allowed`);
    return b;
  }

  /** An array of at most `maxLength` entries, each read by its own reader. */
  array(key: string, maxLength: number): StateReader[] {
    const v = this.field(key);
    if (!Array.isArray(v)) this.fail(key, "expected an array");
    if (v.length > maxLength) this.fail(key, `${v.length} entries, at most ${maxLength} allowed`);
    return v.map((e, i) => new StateReader(e, `${this.path}.${key}[${i}]`));
  }

  /** An array of integers in [min, max]. */
  ints(key: string, maxLength: number, min: number, max: number): number[] {
    return this.array(key, maxLength).map((r) => r.asInt(min, max));
  }

  /** This value itself as an integer (an array entry). */
  asInt(min: number, max: number): number {
    const v = this.value;
    if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) this.fail("", `expected an integer ${min}..${max}, got ${show(v)}`);
    return v;
  }

  /** This value itself as a string of at most `maxLength` characters. */
  asString(maxLength: number): string {
    const v = this.value;
    if (typeof v !== "string" || v.length > maxLength) this.fail("", `expected a string of at most ${maxLength} characters`);
    return v;
  }

  /** This value itself as a 64-bit value saved with u64(). */
  asU64(): bigint {
    const v = this.value;
    if (typeof v !== "string" || !HEX64.test(v)) this.fail("", `expected a 64-bit hex value, got ${show(v)}`);
    return BigInt(v);
  }

  /** Refuse state that does not hold. */
  check(ok: boolean, what: string): void {
    if (!ok) this.fail("", what);
  }
}

function show(v: unknown): string {
  const s = typeof v === "string" ? JSON.stringify(v) : String(v);
  return s.length > 40 ? `${s.slice(0, 40)}...` : s;
}
