/**
 * safetensors reader: an 8-byte little-endian header length, a JSON header
 * (`{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__"?: {..}}`), then the tensor bytes.
 *
 * The header length is checked against the file size before the header is read; every tensor's offsets are
 * checked to lie inside the data section, to match `numel × dtype size`, and not to overlap another tensor.
 * Supported dtypes: F32, F16, BF16. Sharded checkpoints are read through `model.safetensors.index.json`.
 * Every format problem is a `ModelFormatError` naming the file and the problem.
 */
import { GGMLType, type Tensor } from "./types.ts";
import { ModelFormatError } from "./errors.ts";
import { join } from "node:path";

/** Largest header accepted (the reference implementation's limit). */
export const SAFETENSORS_MAX_HEADER = 100_000_000;

const DTYPES: Record<string, { type: GGMLType; size: number }> = {
  F32: { type: GGMLType.F32, size: 4 },
  F16: { type: GGMLType.F16, size: 2 },
  BF16: { type: GGMLType.BF16, size: 2 },
};
const KNOWN_UNSUPPORTED = new Set([
  "F64",
  "I64",
  "I32",
  "I16",
  "I8",
  "U64",
  "U32",
  "U16",
  "U8",
  "BOOL",
  "F8_E4M3",
  "F8_E5M2",
  "F8_E8M0",
  "F4",
  "F6_E2M3",
  "F6_E3M2",
]);

export interface SafetensorsFile {
  /** Tensors in header order, by name. */
  tensors: Map<string, Tensor>;
  /** The header's `__metadata__` (string → string). */
  metadata: Record<string, string>;
}

function err(file: string, msg: string): ModelFormatError {
  return new ModelFormatError(`${file}: ${msg}`);
}

/** Validates the 8-byte length prefix against the total size; returns the header length. */
function headerLength(prefix: Uint8Array, totalSize: number, file: string): number {
  if (totalSize < 8) throw err(file, `file is ${totalSize} bytes, too short for the 8-byte header length`);
  const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(totalSize - 8)) {
    throw err(file, `header length ${n} exceeds the ${totalSize - 8} bytes after the length prefix`);
  }
  if (n > BigInt(SAFETENSORS_MAX_HEADER)) {
    throw err(file, `header length ${n} exceeds ${SAFETENSORS_MAX_HEADER}`);
  }
  if (n < 2n) throw err(file, `header length ${n} is too short for a JSON object`);
  return Number(n);
}

function parseHeader(headerBytes: Uint8Array, file: string): Record<string, unknown> {
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(headerBytes));
  } catch (e) {
    throw err(file, `header is not valid JSON (${(e as Error).message})`);
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    throw err(file, "header is not a JSON object");
  }
  return header as Record<string, unknown>;
}

/** Parses a whole safetensors file held in memory. Tensor data are views into `bytes` where aligned. */
export function parseSafetensors(bytes: Uint8Array, file = "<safetensors>"): SafetensorsFile {
  const n = headerLength(bytes.subarray(0, 8), bytes.length, file);
  const header = parseHeader(bytes.subarray(8, 8 + n), file);
  const data = bytes.subarray(8 + n);
  const metadata: Record<string, string> = {};
  const entries: {
    name: string;
    type: GGMLType;
    size: number;
    shape: number[];
    begin: number;
    end: number;
  }[] = [];
  for (const [name, info] of Object.entries(header)) {
    if (name === "__metadata__") {
      if (typeof info !== "object" || info === null || Array.isArray(info)) {
        throw err(file, "__metadata__ is not an object");
      }
      for (const [k, v] of Object.entries(info)) {
        if (typeof v !== "string") throw err(file, `__metadata__.${k} is not a string`);
        metadata[k] = v;
      }
      continue;
    }
    if (typeof info !== "object" || info === null || Array.isArray(info)) {
      throw err(file, `tensor ${name}: entry is not an object`);
    }
    const { dtype, shape, data_offsets: offs } = info as Record<string, unknown>;
    if (typeof dtype !== "string") throw err(file, `tensor ${name}: missing dtype`);
    const dt = DTYPES[dtype];
    if (!dt) {
      throw err(
        file,
        `tensor ${name}: ${KNOWN_UNSUPPORTED.has(dtype) ? "unsupported" : "unknown"} dtype ${dtype} ` +
          `(supported: F32, F16, BF16)`,
      );
    }
    if (
      !Array.isArray(shape) || shape.some((d) => typeof d !== "number" || !Number.isSafeInteger(d) || d < 0)
    ) {
      throw err(
        file,
        `tensor ${name}: shape must be an array of non-negative integers, got ${JSON.stringify(shape)}`,
      );
    }
    if (
      !Array.isArray(offs) || offs.length !== 2 ||
      offs.some((o) => typeof o !== "number" || !Number.isSafeInteger(o) || o < 0)
    ) {
      throw err(
        file,
        `tensor ${name}: data_offsets must be two non-negative integers, got ${JSON.stringify(offs)}`,
      );
    }
    const [begin, end] = offs as number[];
    if (begin > end) throw err(file, `tensor ${name}: data_offsets [${begin}, ${end}] are not ordered`);
    if (end > data.length) {
      throw err(
        file,
        `tensor ${name}: data_offsets [${begin}, ${end}] out of range (data section is ${data.length} bytes)`,
      );
    }
    let numel = 1;
    for (const d of shape as number[]) numel *= d;
    if (numel * dt.size !== end - begin) {
      throw err(
        file,
        `tensor ${name}: size mismatch: shape ${JSON.stringify(shape)} ${dtype} needs ${
          numel * dt.size
        } bytes, ` +
          `data_offsets span ${end - begin}`,
      );
    }
    entries.push({ name, type: dt.type, size: dt.size, shape: (shape as number[]).slice(), begin, end });
  }
  const sorted = entries.slice().sort((a, b) => a.begin - b.begin || a.end - b.end);
  for (let i = 1; i < sorted.length; i++) {
    const p = sorted[i - 1], c = sorted[i];
    if (c.begin < p.end) {
      throw err(
        file,
        `tensors ${p.name} [${p.begin}, ${p.end}) and ${c.name} [${c.begin}, ${c.end}) overlap`,
      );
    }
  }
  const tensors = new Map<string, Tensor>();
  for (const e of entries) {
    let view = data.subarray(e.begin, e.end);
    // Keep typed-array views possible for consumers: copy a tensor whose bytes are misaligned for its dtype.
    if (view.byteOffset % e.size !== 0) view = view.slice();
    tensors.set(e.name, { name: e.name, type: e.type, shape: e.shape, data: view });
  }
  return { tensors, metadata };
}

/** Reads a safetensors file, checking the header length against the file size before reading further. */
export async function readSafetensorsFile(path: string): Promise<SafetensorsFile> {
  let f: Deno.FsFile;
  try {
    f = await Deno.open(path, { read: true });
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new ModelFormatError(`${path}: file not found`);
    throw e;
  }
  try {
    const size = (await f.stat()).size;
    const prefix = new Uint8Array(Math.min(8, size));
    await readFull(f, prefix);
    headerLength(prefix, size, path); // throws before allocating anything from a lying length
    const bytes = new Uint8Array(size);
    bytes.set(prefix);
    await readFull(f, bytes.subarray(prefix.length));
    return parseSafetensors(bytes, path);
  } finally {
    f.close();
  }
}

async function readFull(f: Deno.FsFile, buf: Uint8Array): Promise<void> {
  let off = 0;
  while (off < buf.length) {
    const n = await f.read(buf.subarray(off));
    if (n === null) throw new ModelFormatError(`unexpected end of file after ${off} of ${buf.length} bytes`);
    off += n;
  }
}

export const SAFETENSORS_INDEX = "model.safetensors.index.json";
export const SAFETENSORS_SINGLE = "model.safetensors";

/**
 * Reads the checkpoint of a Hugging Face directory: `model.safetensors.index.json` (its `weight_map` names the
 * shard of every tensor) or else a single `model.safetensors`. Returns all tensors by name.
 */
export async function readSafetensorsCheckpoint(dir: string): Promise<SafetensorsFile> {
  const indexPath = join(dir, SAFETENSORS_INDEX);
  let indexText: string | undefined;
  try {
    indexText = await Deno.readTextFile(indexPath);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  if (indexText === undefined) {
    const single = join(dir, SAFETENSORS_SINGLE);
    try {
      await Deno.stat(single);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        throw new ModelFormatError(`${dir}: no ${SAFETENSORS_SINGLE} and no ${SAFETENSORS_INDEX}`);
      }
      throw e;
    }
    return readSafetensorsFile(single);
  }
  let index: unknown;
  try {
    index = JSON.parse(indexText);
  } catch (e) {
    throw new ModelFormatError(`${indexPath}: not valid JSON (${(e as Error).message})`);
  }
  const wm = (index as { weight_map?: unknown } | null)?.weight_map;
  if (typeof wm !== "object" || wm === null || Array.isArray(wm)) {
    throw new ModelFormatError(`${indexPath}: missing weight_map object`);
  }
  const byShard = new Map<string, string[]>();
  for (const [name, shard] of Object.entries(wm)) {
    if (typeof shard !== "string" || shard.includes("/") || shard.includes("\\") || shard.startsWith(".")) {
      throw new ModelFormatError(
        `${indexPath}: weight_map[${name}] is not a shard file name: ${JSON.stringify(shard)}`,
      );
    }
    const list = byShard.get(shard) ?? [];
    list.push(name);
    byShard.set(shard, list);
  }
  const tensors = new Map<string, Tensor>();
  const metadata: Record<string, string> = {};
  for (const [shard, names] of byShard) {
    const path = join(dir, shard);
    const f = await readSafetensorsFile(path);
    Object.assign(metadata, f.metadata);
    for (const name of names) {
      const t = f.tensors.get(name);
      if (!t) throw new ModelFormatError(`${path}: tensor ${name} listed in ${SAFETENSORS_INDEX} is missing`);
      tensors.set(name, t);
    }
  }
  return { tensors, metadata };
}

/** A tensor to write: dtype name, row-major shape and its raw little-endian bytes. */
export interface SafetensorsEntry {
  name: string;
  dtype: "F32" | "F16" | "BF16";
  shape: number[];
  data: Uint8Array;
}

/** Serializes tensors to safetensors bytes (header padded with spaces to a multiple of 8, tensors in order). */
export function encodeSafetensors(
  entries: SafetensorsEntry[],
  metadata?: Record<string, string>,
): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let off = 0;
  for (const e of entries) {
    const numel = e.shape.reduce((a, b) => a * b, 1);
    if (numel * DTYPES[e.dtype].size !== e.data.length) {
      throw new RangeError(`tensor ${e.name}: ${e.data.length} bytes for shape [${e.shape}] ${e.dtype}`);
    }
    header[e.name] = { dtype: e.dtype, shape: e.shape, data_offsets: [off, off + e.data.length] };
    off += e.data.length;
  }
  let json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  if (padded !== json.length) {
    const p = new Uint8Array(padded).fill(0x20);
    p.set(json);
    json = p;
  }
  const out = new Uint8Array(8 + json.length + off);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  let pos = 8 + json.length;
  for (const e of entries) {
    out.set(e.data, pos);
    pos += e.data.length;
  }
  return out;
}
