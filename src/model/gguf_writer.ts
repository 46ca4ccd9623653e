/**
 * GGUF writer (version 3 by default; version 2 on request, for tests and old readers).
 *
 * `writeGGUF` builds a whole file in memory; `writeGGUFFile` streams tensors to disk one at a time (for
 * large synthetic models) and commits atomically (temporary file + rename).
 */
import type { GGMLType } from "./types.ts";
import { ggmlTypeName, tensorByteSize } from "./ggml.ts";
import {
  GGUF_DEFAULT_ALIGNMENT,
  GGUF_MAGIC,
  type GGUFArray,
  type GGUFKV,
  type GGUFValue,
  GGUFValueType,
} from "./gguf.ts";

export interface GGUFTensorDesc {
  name: string;
  type: GGMLType;
  /** Row-major, outermost first. */
  shape: number[];
}

export interface GGUFWriteTensor extends GGUFTensorDesc {
  data: Uint8Array;
}

export interface GGUFWriteSpec<T extends GGUFTensorDesc = GGUFWriteTensor> {
  metadata: Record<string, GGUFKV>;
  tensors: T[];
  /** Data alignment (default: metadata general.alignment, else 32). Recorded in general.alignment if not 32. */
  alignment?: number;
  version?: 2 | 3;
}

export interface GGUFLayout {
  /** Everything before the data section, padded to the alignment. */
  header: Uint8Array;
  /** Offset of each tensor's data relative to the data section. */
  offsets: number[];
  /** Byte size of each tensor's data. */
  sizes: number[];
  alignment: number;
  /** Total file size. */
  totalSize: number;
}

class ByteWriter {
  buf = new Uint8Array(1 << 16);
  dv = new DataView(this.buf.buffer);
  pos = 0;
  private grow(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < this.pos + n) cap *= 2;
    const next = new Uint8Array(cap);
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
    this.dv = new DataView(next.buffer);
  }
  u8(v: number) {
    this.grow(1);
    this.dv.setUint8(this.pos, v);
    this.pos += 1;
  }
  i8(v: number) {
    this.grow(1);
    this.dv.setInt8(this.pos, v);
    this.pos += 1;
  }
  u16(v: number) {
    this.grow(2);
    this.dv.setUint16(this.pos, v, true);
    this.pos += 2;
  }
  i16(v: number) {
    this.grow(2);
    this.dv.setInt16(this.pos, v, true);
    this.pos += 2;
  }
  u32(v: number) {
    this.grow(4);
    this.dv.setUint32(this.pos, v, true);
    this.pos += 4;
  }
  i32(v: number) {
    this.grow(4);
    this.dv.setInt32(this.pos, v, true);
    this.pos += 4;
  }
  f32(v: number) {
    this.grow(4);
    this.dv.setFloat32(this.pos, v, true);
    this.pos += 4;
  }
  f64(v: number) {
    this.grow(8);
    this.dv.setFloat64(this.pos, v, true);
    this.pos += 8;
  }
  u64(v: bigint) {
    this.grow(8);
    this.dv.setBigUint64(this.pos, v, true);
    this.pos += 8;
  }
  i64(v: bigint) {
    this.grow(8);
    this.dv.setBigInt64(this.pos, v, true);
    this.pos += 8;
  }
  bytes(b: Uint8Array) {
    this.grow(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }
  string(s: string) {
    const b = new TextEncoder().encode(s);
    this.u64(BigInt(b.length));
    this.bytes(b);
  }
  padTo(alignment: number) {
    const target = Math.ceil(this.pos / alignment) * alignment;
    this.grow(target - this.pos);
    this.buf.fill(0, this.pos, target);
    this.pos = target;
  }
  result(): Uint8Array {
    return this.buf.slice(0, this.pos);
  }
}

function intIn(key: string, v: GGUFValue, lo: number, hi: number, t: GGUFValueType): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < lo || v > hi) {
    throw new RangeError(`GGUF writer: "${key}" value ${String(v)} does not fit ${GGUFValueType[t]}`);
  }
  return v;
}

function big(key: string, v: GGUFValue, t: GGUFValueType): bigint {
  if (typeof v === "bigint") return v;
  if (typeof v === "number" && Number.isSafeInteger(v)) return BigInt(v);
  throw new RangeError(`GGUF writer: "${key}" value ${String(v)} does not fit ${GGUFValueType[t]}`);
}

function writeValue(w: ByteWriter, key: string, type: GGUFValueType, v: GGUFValue): void {
  switch (type) {
    case GGUFValueType.UINT8:
      return w.u8(intIn(key, v, 0, 0xff, type));
    case GGUFValueType.INT8:
      return w.i8(intIn(key, v, -0x80, 0x7f, type));
    case GGUFValueType.UINT16:
      return w.u16(intIn(key, v, 0, 0xffff, type));
    case GGUFValueType.INT16:
      return w.i16(intIn(key, v, -0x8000, 0x7fff, type));
    case GGUFValueType.UINT32:
      return w.u32(intIn(key, v, 0, 0xffffffff, type));
    case GGUFValueType.INT32:
      return w.i32(intIn(key, v, -0x80000000, 0x7fffffff, type));
    case GGUFValueType.UINT64: {
      const b = big(key, v, type);
      if (b < 0n || b >= 1n << 64n) {
        throw new RangeError(`GGUF writer: "${key}" value ${b} does not fit UINT64`);
      }
      return w.u64(b);
    }
    case GGUFValueType.INT64: {
      const b = big(key, v, type);
      if (b < -(1n << 63n) || b >= 1n << 63n) {
        throw new RangeError(`GGUF writer: "${key}" value ${b} does not fit INT64`);
      }
      return w.i64(b);
    }
    case GGUFValueType.FLOAT32:
    case GGUFValueType.FLOAT64:
      if (typeof v !== "number") throw new TypeError(`GGUF writer: "${key}" needs a number`);
      return type === GGUFValueType.FLOAT32 ? w.f32(v) : w.f64(v);
    case GGUFValueType.BOOL:
      if (typeof v !== "boolean") throw new TypeError(`GGUF writer: "${key}" needs a boolean`);
      return w.u8(v ? 1 : 0);
    case GGUFValueType.STRING:
      if (typeof v !== "string") throw new TypeError(`GGUF writer: "${key}" needs a string`);
      return w.string(v);
    case GGUFValueType.ARRAY: {
      if (typeof v !== "object" || v === null || !Array.isArray((v as GGUFArray).items)) {
        throw new TypeError(`GGUF writer: "${key}" needs an array value { itemType, items }`);
      }
      const arr = v as GGUFArray;
      w.u32(arr.itemType);
      w.u64(BigInt(arr.items.length));
      for (const item of arr.items) writeValue(w, key, arr.itemType, item);
      return;
    }
    default:
      throw new TypeError(`GGUF writer: "${key}" has unknown value type ${type}`);
  }
}

function resolveAlignment(
  spec: GGUFWriteSpec<GGUFTensorDesc>,
): { alignment: number; metadata: Record<string, GGUFKV> } {
  const metadata: Record<string, GGUFKV> = Object.create(null);
  Object.assign(metadata, spec.metadata);
  const existing = metadata["general.alignment"];
  let alignment = spec.alignment ??
    (existing ? Number(existing.value as number | bigint) : GGUF_DEFAULT_ALIGNMENT);
  if (!Number.isInteger(alignment) || alignment <= 0 || (alignment & (alignment - 1)) !== 0) {
    throw new RangeError(`GGUF writer: alignment ${alignment} is not a positive power of two`);
  }
  alignment = alignment | 0;
  if (alignment !== GGUF_DEFAULT_ALIGNMENT || existing) {
    metadata["general.alignment"] = { type: GGUFValueType.UINT32, value: alignment };
  }
  return { alignment, metadata };
}

/** Encode the header (everything up to the aligned data section) and compute the data layout. */
export function layoutGGUF(spec: GGUFWriteSpec<GGUFTensorDesc>): GGUFLayout {
  const { alignment, metadata } = resolveAlignment(spec);
  const w = new ByteWriter();
  w.u32(GGUF_MAGIC);
  w.u32(spec.version ?? 3);
  w.u64(BigInt(spec.tensors.length));
  const keys = Object.keys(metadata);
  w.u64(BigInt(keys.length));
  for (const key of keys) {
    const kv = metadata[key];
    w.string(key);
    w.u32(kv.type);
    writeValue(w, key, kv.type, kv.value);
  }
  const offsets: number[] = [];
  const sizes: number[] = [];
  const names = new Set<string>();
  let off = 0;
  for (const t of spec.tensors) {
    if (names.has(t.name)) throw new RangeError(`GGUF writer: duplicate tensor name "${t.name}"`);
    names.add(t.name);
    if (t.shape.length < 1 || t.shape.length > 4) {
      throw new RangeError(`GGUF writer: tensor "${t.name}" has ${t.shape.length} dims (1..4 allowed)`);
    }
    const size = tensorByteSize(t.type, t.shape);
    w.string(t.name);
    w.u32(t.shape.length);
    for (let d = t.shape.length - 1; d >= 0; d--) w.u64(BigInt(t.shape[d]));
    w.u32(t.type);
    w.u64(BigInt(off));
    offsets.push(off);
    sizes.push(size);
    off = Math.ceil((off + size) / alignment) * alignment;
  }
  w.padTo(alignment);
  const header = w.result();
  const last = spec.tensors.length - 1;
  const totalSize = header.length + (last >= 0 ? offsets[last] + sizes[last] : 0);
  return { header, offsets, sizes, alignment, totalSize };
}

function checkData(t: GGUFWriteTensor, size: number): void {
  if (t.data.byteLength !== size) {
    throw new RangeError(
      `GGUF writer: tensor "${t.name}" (${
        ggmlTypeName(t.type)
      } [${t.shape}]) needs ${size} bytes, got ${t.data.byteLength}`,
    );
  }
}

/** Build a complete GGUF file in memory. */
export function writeGGUF(spec: GGUFWriteSpec): Uint8Array {
  const layout = layoutGGUF(spec);
  const out = new Uint8Array(layout.totalSize);
  out.set(layout.header, 0);
  spec.tensors.forEach((t, i) => {
    checkData(t, layout.sizes[i]);
    out.set(t.data, layout.header.length + layout.offsets[i]);
  });
  return out;
}

/**
 * Stream a GGUF file to `path`: tensors' bytes come from `produce(i)` one at a time, so only one tensor is
 * held in memory. Writes a temporary file next to `path` and renames it into place. Returns the file size.
 */
export async function writeGGUFFile(
  path: string,
  spec: GGUFWriteSpec<GGUFTensorDesc>,
  produce: (index: number, desc: GGUFTensorDesc) => Uint8Array | Promise<Uint8Array>,
): Promise<number> {
  const layout = layoutGGUF(spec);
  const tmp = `${path}.tmp-${Deno.pid}-${Date.now()}`;
  const f = await Deno.open(tmp, { write: true, create: true, truncate: true });
  try {
    const writeAll = async (b: Uint8Array) => {
      let done = 0;
      while (done < b.length) done += await f.write(b.subarray(done));
    };
    await writeAll(layout.header);
    let pos = 0;
    for (let i = 0; i < spec.tensors.length; i++) {
      const pad = layout.offsets[i] - pos;
      if (pad > 0) await writeAll(new Uint8Array(pad));
      const desc = spec.tensors[i];
      const data = await produce(i, desc);
      checkData({ ...desc, data }, layout.sizes[i]);
      await writeAll(data);
      pos = layout.offsets[i] + layout.sizes[i];
    }
    f.close();
    await Deno.rename(tmp, path);
  } catch (e) {
    try {
      f.close();
    } catch { /* already closed */ }
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
  return layout.totalSize;
}
