/**
 * GGUF reader (versions 2 and 3, little-endian).
 *
 * Every length and count is checked against the bytes that remain before anything is allocated from it, so
 * a malformed or hostile file ends in a `ModelFormatError` naming the problem and its byte offset, never in
 * a hang, a crash or a huge allocation. Tensor data are views into the file's bytes (no copies).
 */
import { GGMLType, type Tensor } from "./types.ts";
import { ModelFormatError } from "./errors.ts";
import { ggmlTypeInfo, ggmlTypeName } from "./ggml.ts";

export const GGUF_MAGIC = 0x46554747; // "GGUF" little-endian
export const GGUF_DEFAULT_ALIGNMENT = 32;
/** Maximum nesting of arrays inside arrays. */
const MAX_ARRAY_DEPTH = 8;
const MAX_DIMS = 4;

export enum GGUFValueType {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
}

/** An array value: its element type and elements (nested arrays are GGUFArray elements). */
export interface GGUFArray {
  itemType: GGUFValueType;
  items: GGUFValue[];
}

/** uint64/int64 are bigint; other numbers are number; bool boolean; string string; array GGUFArray. */
export type GGUFValue = number | bigint | boolean | string | GGUFArray;

/** A metadata value with its GGUF type (kept so that files round-trip exactly). */
export interface GGUFKV {
  type: GGUFValueType;
  value: GGUFValue;
}

export interface GGUFTensorInfo {
  name: string;
  type: GGMLType;
  /** Row-major, outermost first (the reverse of GGUF's on-disk dims). */
  shape: number[];
  /** Byte offset relative to the start of the data section. */
  offset: number;
  nElements: number;
  nBytes: number;
}

export interface GGUFFile {
  version: number;
  alignment: number;
  /** Null-prototype record of every key/value pair, in file order. */
  metadata: Record<string, GGUFKV>;
  tensors: GGUFTensorInfo[];
  /** Absolute byte offset of the (aligned) data section. */
  dataOffset: number;
  /** The whole file. */
  bytes: Uint8Array;
}

const FIXED_SIZE: Partial<Record<GGUFValueType, number>> = {
  [GGUFValueType.UINT8]: 1,
  [GGUFValueType.INT8]: 1,
  [GGUFValueType.UINT16]: 2,
  [GGUFValueType.INT16]: 2,
  [GGUFValueType.UINT32]: 4,
  [GGUFValueType.INT32]: 4,
  [GGUFValueType.FLOAT32]: 4,
  [GGUFValueType.BOOL]: 1,
  [GGUFValueType.UINT64]: 8,
  [GGUFValueType.INT64]: 8,
  [GGUFValueType.FLOAT64]: 8,
};

/** Smallest encoding of one value of `type` (used to bound counts before allocating). */
export function ggufMinValueSize(type: GGUFValueType): number {
  if (type === GGUFValueType.STRING) return 8;
  if (type === GGUFValueType.ARRAY) return 12;
  return FIXED_SIZE[type] ?? 1;
}

export function ggufValueTypeName(type: number): string {
  return GGUFValueType[type] ?? `type ${type}`;
}

function isValueType(t: number): t is GGUFValueType {
  return Number.isInteger(t) && t >= 0 && t <= 12;
}

const utf8 = new TextDecoder("utf-8");

class Reader {
  pos = 0;
  readonly dv: DataView;
  constructor(readonly bytes: Uint8Array) {
    this.dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  get remaining(): number {
    return this.bytes.byteLength - this.pos;
  }
  fail(msg: string, at = this.pos): never {
    throw new ModelFormatError(`GGUF: ${msg} at byte offset ${at}`);
  }
  need(n: number, what: string): void {
    if (n > this.remaining) {
      this.fail(
        `truncated: ${what} needs ${n} bytes but only ${this.remaining} remain (file size ${this.bytes.byteLength})`,
      );
    }
  }
  u8(what: string): number {
    this.need(1, what);
    return this.bytes[this.pos++];
  }
  i8(what: string): number {
    this.need(1, what);
    return this.dv.getInt8(this.pos++);
  }
  u16(what: string): number {
    this.need(2, what);
    const v = this.dv.getUint16(this.pos, true);
    this.pos += 2;
    return v;
  }
  i16(what: string): number {
    this.need(2, what);
    const v = this.dv.getInt16(this.pos, true);
    this.pos += 2;
    return v;
  }
  u32(what: string): number {
    this.need(4, what);
    const v = this.dv.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }
  i32(what: string): number {
    this.need(4, what);
    const v = this.dv.getInt32(this.pos, true);
    this.pos += 4;
    return v;
  }
  f32(what: string): number {
    this.need(4, what);
    const v = this.dv.getFloat32(this.pos, true);
    this.pos += 4;
    return v;
  }
  f64(what: string): number {
    this.need(8, what);
    const v = this.dv.getFloat64(this.pos, true);
    this.pos += 8;
    return v;
  }
  u64(what: string): bigint {
    this.need(8, what);
    const v = this.dv.getBigUint64(this.pos, true);
    this.pos += 8;
    return v;
  }
  i64(what: string): bigint {
    this.need(8, what);
    const v = this.dv.getBigInt64(this.pos, true);
    this.pos += 8;
    return v;
  }
  /** A uint64 that must be a safe integer no larger than `max`. */
  count(what: string, max: number): number {
    const at = this.pos;
    const v = this.u64(what);
    if (v > BigInt(max)) {
      this.fail(
        `${what} ${v} is impossible (at most ${max} fit in the remaining bytes: truncated or corrupt)`,
        at,
      );
    }
    return Number(v);
  }
  string(what: string): string {
    const len = this.count(`${what} length`, Math.max(0, this.remaining - 8));
    const s = utf8.decode(this.bytes.subarray(this.pos, this.pos + len));
    this.pos += len;
    return s;
  }
}

function readValue(r: Reader, type: GGUFValueType, what: string, depth: number): GGUFValue {
  switch (type) {
    case GGUFValueType.UINT8:
      return r.u8(what);
    case GGUFValueType.INT8:
      return r.i8(what);
    case GGUFValueType.UINT16:
      return r.u16(what);
    case GGUFValueType.INT16:
      return r.i16(what);
    case GGUFValueType.UINT32:
      return r.u32(what);
    case GGUFValueType.INT32:
      return r.i32(what);
    case GGUFValueType.FLOAT32:
      return r.f32(what);
    case GGUFValueType.FLOAT64:
      return r.f64(what);
    case GGUFValueType.UINT64:
      return r.u64(what);
    case GGUFValueType.INT64:
      return r.i64(what);
    case GGUFValueType.BOOL: {
      const at = r.pos;
      const b = r.u8(what);
      if (b > 1) r.fail(`${what}: bool value ${b} is neither 0 nor 1`, at);
      return b === 1;
    }
    case GGUFValueType.STRING:
      return r.string(what);
    case GGUFValueType.ARRAY: {
      if (depth >= MAX_ARRAY_DEPTH) r.fail(`${what}: arrays nested deeper than ${MAX_ARRAY_DEPTH}`);
      const tAt = r.pos;
      const itemType = r.u32(`${what} array item type`);
      if (!isValueType(itemType)) r.fail(`${what}: unknown array item value type ${itemType}`, tAt);
      const minSize = ggufMinValueSize(itemType);
      const n = r.count(`${what} array length`, Math.floor(Math.max(0, r.remaining - 8) / minSize));
      const items: GGUFValue[] = new Array(n);
      for (let i = 0; i < n; i++) items[i] = readValue(r, itemType, what, depth + 1);
      return { itemType, items };
    }
  }
}

/** Parse a GGUF file held in memory. Throws ModelFormatError on anything malformed. */
export function parseGGUF(bytes: Uint8Array): GGUFFile {
  const r: Reader = new Reader(bytes);
  const magic = r.u32("magic");
  if (magic !== GGUF_MAGIC) {
    r.fail(`bad magic 0x${magic.toString(16).padStart(8, "0")} (expected "GGUF")`, 0);
  }
  const version = r.u32("version");
  if (version === 1) r.fail("unsupported GGUF version 1 (only versions 2 and 3 are supported)", 4);
  if (version !== 2 && version !== 3) {
    const hint = version > 0xffff ? " (a big-endian file?)" : "";
    r.fail(`unsupported GGUF version ${version}${hint} (only versions 2 and 3 are supported)`, 4);
  }
  // Minimum encodings: a tensor info is name(8) + n_dims(4) + 1 dim(8) + type(4) + offset(8) = 32 bytes;
  // a key/value pair is key(8) + type(4) + 1 byte of value = 13 bytes.
  const tensorCountAt = r.pos;
  const tensorCount = r.u64("tensor count");
  const kvCountAt = r.pos;
  const kvCount = r.u64("metadata kv count");
  if (kvCount > BigInt(Math.floor(r.remaining / 13))) {
    r.fail(
      `metadata kv count ${kvCount} is impossible for ${r.remaining} remaining bytes (truncated or corrupt)`,
      kvCountAt,
    );
  }
  if (tensorCount > BigInt(Math.floor(r.remaining / 32))) {
    r.fail(
      `tensor count ${tensorCount} is impossible for ${r.remaining} remaining bytes (truncated or corrupt)`,
      tensorCountAt,
    );
  }

  const metadata: Record<string, GGUFKV> = Object.create(null);
  for (let i = 0; i < Number(kvCount); i++) {
    const keyAt = r.pos;
    const key = r.string(`metadata key #${i}`);
    if (Object.hasOwn(metadata, key)) r.fail(`duplicate metadata key "${key}"`, keyAt);
    const typeAt = r.pos;
    const type = r.u32(`value type of "${key}"`);
    if (!isValueType(type)) r.fail(`unknown metadata value type ${type} for key "${key}"`, typeAt);
    const value = readValue(r, type, `value of "${key}"`, 0);
    metadata[key] = { type, value };
  }

  let alignment = GGUF_DEFAULT_ALIGNMENT;
  const al = metadata["general.alignment"];
  if (al) {
    const v = typeof al.value === "bigint" ? Number(al.value) : al.value;
    if (typeof v !== "number" || !Number.isInteger(v) || v <= 0 || (v & (v - 1)) !== 0 || v > 1 << 30) {
      r.fail(`general.alignment ${String(v)} is not a positive power of two`, 0);
    }
    alignment = v as number;
  }

  const tensors: GGUFTensorInfo[] = [];
  const seen = new Set<string>();
  for (let i = 0; i < Number(tensorCount); i++) {
    const nameAt = r.pos;
    const name = r.string(`tensor #${i} name`);
    if (seen.has(name)) r.fail(`duplicate tensor name "${name}"`, nameAt);
    seen.add(name);
    const ndAt = r.pos;
    const nDims = r.u32(`n_dims of tensor "${name}"`);
    if (nDims < 1 || nDims > MAX_DIMS) {
      r.fail(`tensor "${name}" has n_dims ${nDims} (must be 1..${MAX_DIMS})`, ndAt);
    }
    const dims: number[] = [];
    let nElements = 1;
    for (let d = 0; d < nDims; d++) {
      const dimAt = r.pos;
      const v = r.u64(`dim ${d} of tensor "${name}"`);
      if (v === 0n) r.fail(`tensor "${name}" has a zero dim ${d}`, dimAt);
      if (v > BigInt(Number.MAX_SAFE_INTEGER) || nElements * Number(v) > Number.MAX_SAFE_INTEGER) {
        r.fail(`tensor "${name}" dims overflow (dim ${d} = ${v})`, dimAt);
      }
      dims.push(Number(v));
      nElements *= Number(v);
    }
    const typeAt = r.pos;
    const type = r.u32(`type of tensor "${name}"`);
    const info = ggmlTypeInfo(type);
    if (!info) r.fail(`unknown tensor type ${type} for tensor "${name}"`, typeAt);
    if (dims[0] % info.blockSize !== 0) {
      r.fail(
        `tensor "${name}" inner dim ${
          dims[0]
        } is not a multiple of the ${info.name} block size ${info.blockSize}`,
        typeAt,
      );
    }
    const nBytes = (nElements / info.blockSize) * info.typeSize;
    const offAt = r.pos;
    const off = r.u64(`offset of tensor "${name}"`);
    if (off > BigInt(Number.MAX_SAFE_INTEGER)) {
      r.fail(`tensor "${name}" offset ${off} is out of range`, offAt);
    }
    const offset = Number(off);
    if (offset % alignment !== 0) {
      r.fail(`tensor "${name}" offset ${offset} is misaligned (alignment ${alignment})`, offAt);
    }
    tensors.push({ name, type: type as GGMLType, shape: dims.slice().reverse(), offset, nElements, nBytes });
  }

  const headerEnd = r.pos;
  const dataOffset = Math.ceil(headerEnd / alignment) * alignment;
  if (tensors.length > 0 && dataOffset > bytes.byteLength) {
    r.fail(
      `truncated: data section starts at ${dataOffset} but the file has ${bytes.byteLength} bytes`,
      headerEnd,
    );
  }
  const dataSize = Math.max(0, bytes.byteLength - dataOffset);
  for (const t of tensors) {
    if (t.offset + t.nBytes > dataSize) {
      r.fail(
        `tensor "${t.name}" data [${dataOffset + t.offset}, ${dataOffset + t.offset + t.nBytes}) ` +
          `is beyond the end of the file (${bytes.byteLength} bytes)`,
        dataOffset + t.offset,
      );
    }
  }
  const sorted = tensors.slice().sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1], cur = sorted[i];
    if (cur.offset < prev.offset + prev.nBytes) {
      r.fail(`tensor "${cur.name}" overlaps tensor "${prev.name}"`, dataOffset + cur.offset);
    }
  }
  return { version, alignment, metadata, tensors, dataOffset, bytes };
}

/** The bytes of a tensor: a view into the file (no copy). */
export function tensorBytes(file: GGUFFile, info: GGUFTensorInfo): Uint8Array {
  const start = file.dataOffset + info.offset;
  return file.bytes.subarray(start, start + info.nBytes);
}

/** A Tensor (contract type) whose data is a view into the file. */
export function ggufTensor(file: GGUFFile, info: GGUFTensorInfo): Tensor {
  return { name: info.name, type: info.type, shape: info.shape.slice(), data: tensorBytes(file, info) };
}

/** Read and parse a GGUF file from disk. */
export async function readGGUFFile(path: string): Promise<GGUFFile> {
  return parseGGUF(await Deno.readFile(path));
}

/** A metadata value as plain JS: arrays become arrays (recursively); uint64/int64 become numbers when safe. */
export function plainValue(v: GGUFValue): unknown {
  if (typeof v === "bigint") {
    return v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= BigInt(Number.MIN_SAFE_INTEGER) ? Number(v) : v;
  }
  if (typeof v === "object") return v.items.map(plainValue);
  return v;
}

/** All metadata as plain JS values (see `plainValue`). */
export function plainMetadata(file: GGUFFile): Record<string, unknown> {
  const out: Record<string, unknown> = Object.create(null);
  for (const [k, kv] of Object.entries(file.metadata)) out[k] = plainValue(kv.value);
  return out;
}

/** A metadata value as plain JS, or undefined when the key is absent. */
export function metaValue(file: GGUFFile, key: string): unknown {
  const kv = file.metadata[key];
  return kv ? plainValue(kv.value) : undefined;
}

/** Human-readable type name of a tensor, e.g. for summaries. */
export function tensorTypeName(info: GGUFTensorInfo): string {
  return ggmlTypeName(info.type);
}
