/**
 * Session snapshot codec: the pruned KV cache of a conversation plus everything needed to resume it
 * (token history, KV policy state, sampler state, turn records), as one compact, checksummed binary blob.
 *
 * Envelope (little-endian):
 * ```
 *  off  size  field
 *    0     4  magic "LSNP"
 *    4     2  format version (1)
 *    6     1  flags: bit0 = payload is raw-deflate compressed, bit1 = float blocks are byte-shuffled
 *    7     1  KV precision: 0 = f32, 1 = f16, 2 = int8 (per-row symmetric absmax, f32 scale per token per head)
 *    8     4  rawLength: payload size after decompression
 *   12     4  compressedLength: payload size as stored
 *   16     2  fpLength: byte length of the model fingerprint (UTF-8)
 *   18  fpLen fingerprint
 *    …     4  CRC-32 over every header byte before it (0 … 18+fpLen) and the stored payload
 *    …  cLen  payload
 * ```
 * The blob is exactly `22 + fpLen + compressedLength` bytes long. Payload (after inflate):
 * ```
 * u32 nLayers, u32 nKVHeads, u32 headDim, u32 nextPos
 * varint nTokens, nTokens × varint token
 * per layer: varint len; positions: varint first, (len-1) × zigzag-varint delta; K block; V block
 *    K/V block: f32 → len·kvDim f32; f16 → len·kvDim f16; int8 → len·nKVHeads f32 scales, len·kvDim int8
 * varint nScores; per score array: varint length, length × f32
 * varint jsonLength, UTF-8 JSON { policy: { name, params, meta }, sampler?, meta? }
 * ```
 * With the shuffle flag, every f32/f16 block is stored byte-plane by byte-plane (all byte 0s, then all byte 1s…),
 * which lets deflate squeeze the sign/exponent bytes of float data.
 *
 * Decoding checks the magic, version, lengths, checksum and fingerprint before it inflates anything, caps the
 * inflated size (both by a hard limit and by deflate's maximum ratio, so a lying length never allocates), and
 * checks every count against the bytes that remain before allocating. Every failure is a `SnapshotError`.
 *
 * f32 is lossless. f16 rounds as every f16 cache does (src/model/f16.ts: to nearest even, beyond ±65504 to
 * ±inf), so a snapshot of an f16 cache is bit-exact and one of an f32 cache holds what an f16 cache of the same
 * rows would (relative error ≤ 2⁻¹¹). int8 is lossy: absolute error ≤ absmax(row)/254 per token per head.
 */
import zlib from "node:zlib";
import { HostKVCache } from "../kv/cache.ts";
import { fromF16Bits, toF16Bits } from "../model/f16.ts";

export type KVPrecision = "f32" | "f16" | "int8";

export interface PolicySnapshot {
  name: string;
  params: Record<string, unknown>;
  state: { scores: Float32Array[]; meta: Record<string, unknown> };
}

export interface SessionSnapshot {
  /** Model fingerprint (hex); decode rejects a mismatch. */
  fingerprint: string;
  /** Whole token history of the session (prompt + generated, all turns). */
  tokens: number[];
  /** Pruned cache: `kv.nextPos` tokens of history are in it; `tokens.slice(kv.nextPos)` are pending. */
  kv: HostKVCache;
  policy: PolicySnapshot;
  /** JSON sampler state (e.g. RNG state). */
  sampler?: Record<string, unknown>;
  /** JSON: turn records etc. */
  meta?: Record<string, unknown>;
}

export type SnapshotErrorCode =
  | "bad_magic"
  | "bad_version"
  | "checksum"
  | "fingerprint_mismatch"
  | "truncated"
  | "malformed";

export class SnapshotError extends Error {
  readonly code: SnapshotErrorCode;
  constructor(code: SnapshotErrorCode, message: string) {
    super(`session snapshot: ${message}`);
    this.name = "SnapshotError";
    this.code = code;
  }
}

export interface EncodeOptions {
  kvPrecision: KVPrecision;
  /** Deflate level 0–9 (default 6; 0 = store). The payload is stored uncompressed if deflate does not shrink it. */
  level?: number;
  /** Byte-shuffle float blocks before deflate (default true). */
  shuffle?: boolean;
}

export interface DecodeExpect {
  fingerprint?: string;
  /** Largest inflated payload accepted (default 1 GiB). */
  maxRawBytes?: number;
}

export interface EncodeStats {
  bytes: Uint8Array;
  /** Inflated payload size. */
  rawBytes: number;
  /** Size of the final blob (header + compressed payload). */
  encodedBytes: number;
  /** What the kept K/V rows occupy in memory as f32. */
  kvF32Bytes: number;
  precision: KVPrecision;
}

export interface SnapshotHeader {
  version: number;
  precision: KVPrecision;
  compressed: boolean;
  shuffled: boolean;
  rawBytes: number;
  compressedBytes: number;
  fingerprint: string;
  encodedBytes: number;
}

export const SNAPSHOT_MAGIC = new Uint8Array([0x4c, 0x53, 0x4e, 0x50]); // "LSNP"
export const SNAPSHOT_VERSION = 1;
const FIXED_HEADER = 18;
const CRC_BYTES = 4;
const FLAG_DEFLATE = 1;
const FLAG_SHUFFLE = 2;
const KNOWN_FLAGS = FLAG_DEFLATE | FLAG_SHUFFLE;
const PRECISIONS: KVPrecision[] = ["f32", "f16", "int8"];
const DEFAULT_MAX_RAW = 1 << 30;
/** Deflate cannot expand more than 1032:1 (258-byte matches coded in 2 bits); allow slack for tiny inputs. */
const MAX_DEFLATE_RATIO = 1032;
const MAX_SHAPE_DIM = 1 << 16;
const MAX_KV_DIM = 1 << 20;

if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  throw new Error("session codec: a little-endian host is required");
}

// ---------------------------------------------------------------------------------------------- checksum

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32js(data: Uint8Array, prev = 0): number {
  let c = (prev ^ 0xffffffff) >>> 0;
  for (let i = 0; i < data.length; i++) c = CRC_TABLE[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

type Crc32Fn = (data: Uint8Array, value?: number) => number;
const nativeCrc32: Crc32Fn | undefined = (zlib as unknown as { crc32?: Crc32Fn }).crc32;

/** CRC-32 (IEEE), continuing from `prev`. Uses node:zlib's native crc32 where available. */
export function crc32(data: Uint8Array, prev = 0): number {
  return nativeCrc32 ? nativeCrc32(data, prev) >>> 0 : crc32js(data, prev);
}

// ---------------------------------------------------------------------------------------------- helpers

function varintSize(v: number): number {
  let n = 1;
  while (v >= 0x80) {
    v = Math.floor(v / 128);
    n++;
  }
  return n;
}

function zigzag(v: number): number {
  return v >= 0 ? v * 2 : -v * 2 - 1;
}

function unzigzag(v: number): number {
  return v % 2 === 0 ? v / 2 : -(v + 1) / 2;
}

function shuffleBytes(src: Uint8Array, width: number, dst: Uint8Array, dstOff: number): void {
  const n = src.length / width;
  for (let b = 0; b < width; b++) {
    let o = dstOff + b * n;
    for (let i = b; i < src.length; i += width) dst[o++] = src[i];
  }
}

function unshuffleBytes(src: Uint8Array, width: number, dst: Uint8Array): void {
  const n = dst.length / width;
  for (let b = 0; b < width; b++) {
    let s = b * n;
    for (let i = b; i < dst.length; i += width) dst[i] = src[s++];
  }
}

function bytesOf(a: Float32Array | Uint16Array | Int8Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

// ---------------------------------------------------------------------------------------------- encode

interface Plan {
  kv: HostKVCache;
  nLayers: number;
  kvDim: number;
  nHeads: number;
  headDim: number;
  precision: KVPrecision;
  json: Uint8Array;
  fp: Uint8Array;
  rawBytes: number;
}

function validateAndPlan(s: SessionSnapshot, precision: KVPrecision): Plan {
  if (!PRECISIONS.includes(precision)) {
    throw new TypeError(`encodeSnapshot: unknown kvPrecision ${precision}`);
  }
  if (typeof s.fingerprint !== "string") throw new TypeError("encodeSnapshot: fingerprint must be a string");
  const fp = new TextEncoder().encode(s.fingerprint);
  if (fp.length > 0xffff) throw new RangeError("encodeSnapshot: fingerprint longer than 65535 bytes");
  const kv = s.kv;
  const { nLayers, nKVHeads, headDim } = kv.shape;
  for (const [k, v] of Object.entries({ nLayers, nKVHeads, headDim })) {
    if (!Number.isInteger(v) || v < 0 || v > MAX_SHAPE_DIM || (k !== "nLayers" && v < 1)) {
      throw new RangeError(`encodeSnapshot: bad KV shape ${k}=${v}`);
    }
  }
  const kvDim = nKVHeads * headDim;
  if (kvDim > MAX_KV_DIM) throw new RangeError(`encodeSnapshot: kvDim ${kvDim} too large`);
  const nextPos = kv.nextPos;
  if (!Number.isInteger(nextPos) || nextPos < 0 || nextPos > 0x7fffffff) {
    throw new RangeError(`encodeSnapshot: bad kv.nextPos ${nextPos}`);
  }
  if (!Array.isArray(s.tokens)) throw new TypeError("encodeSnapshot: tokens must be an array");
  if (s.tokens.length < nextPos) {
    throw new RangeError(`encodeSnapshot: ${s.tokens.length} tokens but kv.nextPos is ${nextPos}`);
  }
  let raw = 16 + varintSize(s.tokens.length);
  for (const t of s.tokens) {
    if (!Number.isInteger(t) || t < 0 || t > 0x7fffffff) {
      throw new RangeError(`encodeSnapshot: bad token ${t}`);
    }
    raw += varintSize(t);
  }
  const bytesPerRowKV = precision === "f32"
    ? kvDim * 4
    : precision === "f16"
    ? kvDim * 2
    : kvDim + nKVHeads * 4;
  for (let l = 0; l < nLayers; l++) {
    const n = kv.len[l];
    const pos = kv.pos[l];
    if (
      !Number.isInteger(n) || n < 0 || n * kvDim > kv.k[l].length || n * kvDim > kv.v[l].length ||
      n > pos.length
    ) {
      throw new RangeError(`encodeSnapshot: layer ${l} length ${n} exceeds its buffers`);
    }
    raw += varintSize(n);
    let prev = 0;
    for (let i = 0; i < n; i++) {
      const p = pos[i];
      if (p < 0 || p >= nextPos) {
        throw new RangeError(`encodeSnapshot: layer ${l} position ${p} outside [0, nextPos=${nextPos})`);
      }
      raw += varintSize(i === 0 ? p : zigzag(p - prev));
      prev = p;
    }
    raw += 2 * n * bytesPerRowKV;
  }
  const scores = s.policy?.state?.scores;
  if (typeof s.policy?.name !== "string" || !Array.isArray(scores)) {
    throw new TypeError("encodeSnapshot: policy must have a name and state.scores (Float32Array[])");
  }
  raw += varintSize(scores.length);
  for (const a of scores) {
    if (!(a instanceof Float32Array)) {
      throw new TypeError("encodeSnapshot: policy scores must be Float32Arrays");
    }
    raw += varintSize(a.length) + a.length * 4;
  }
  const jsonObj: Record<string, unknown> = {
    policy: { name: s.policy.name, params: s.policy.params ?? {}, meta: s.policy.state.meta ?? {} },
  };
  if (s.sampler !== undefined) jsonObj.sampler = s.sampler;
  if (s.meta !== undefined) jsonObj.meta = s.meta;
  const json = new TextEncoder().encode(JSON.stringify(jsonObj));
  raw += varintSize(json.length) + json.length;
  return { kv, nLayers, kvDim, nHeads: nKVHeads, headDim, precision, json, fp, rawBytes: raw };
}

/** Exact size of the uncompressed payload for `s` at the given precision (what deflate starts from). */
export function estimateRawBytes(s: SessionSnapshot, kvPrecision: KVPrecision = "f32"): number {
  return validateAndPlan(s, kvPrecision).rawBytes;
}

class Writer {
  readonly buf: Uint8Array;
  readonly dv: DataView;
  off = 0;
  constructor(size: number) {
    this.buf = new Uint8Array(size);
    this.dv = new DataView(this.buf.buffer);
  }
  u32(v: number): void {
    this.dv.setUint32(this.off, v, true);
    this.off += 4;
  }
  varint(v: number): void {
    while (v >= 0x80) {
      this.buf[this.off++] = (v % 128) | 0x80;
      v = Math.floor(v / 128);
    }
    this.buf[this.off++] = v;
  }
  bytes(b: Uint8Array): void {
    this.buf.set(b, this.off);
    this.off += b.length;
  }
  /** Float data (as bytes) of element `width`, shuffled into byte planes when asked. */
  floats(b: Uint8Array, width: number, shuffle: boolean): void {
    if (shuffle && width > 1) shuffleBytes(b, width, this.buf, this.off);
    else this.buf.set(b, this.off);
    this.off += b.length;
  }
}

function quantizeInt8(rows: Float32Array, n: number, nHeads: number, headDim: number, what: string) {
  const scales = new Float32Array(n * nHeads);
  const q = new Int8Array(n * nHeads * headDim);
  for (let r = 0; r < n * nHeads; r++) {
    const base = r * headDim;
    let amax = 0;
    for (let i = 0; i < headDim; i++) {
      const x = rows[base + i];
      if (!Number.isFinite(x)) {
        throw new RangeError(`encodeSnapshot: non-finite value in ${what}; int8 cannot hold it`);
      }
      const a = Math.abs(x);
      if (a > amax) amax = a;
    }
    const scale = Math.fround(amax / 127);
    scales[r] = scale;
    if (scale === 0) continue;
    for (let i = 0; i < headDim; i++) {
      const v = Math.round(rows[base + i] / scale);
      q[base + i] = v > 127 ? 127 : v < -127 ? -127 : v;
    }
  }
  return { scales, q };
}

/** Encode a snapshot; returns the blob together with its sizes. */
export function encodeSnapshotWithStats(s: SessionSnapshot, opts: EncodeOptions): EncodeStats {
  const plan = validateAndPlan(s, opts.kvPrecision);
  const shuffle = opts.shuffle ?? true;
  const { kv, nLayers, kvDim, nHeads, headDim, precision } = plan;
  const w = new Writer(plan.rawBytes);
  w.u32(nLayers);
  w.u32(nHeads);
  w.u32(headDim);
  w.u32(kv.nextPos);
  w.varint(s.tokens.length);
  for (const t of s.tokens) w.varint(t);
  let kvF32Bytes = 0;
  for (let l = 0; l < nLayers; l++) {
    const n = kv.len[l];
    const pos = kv.pos[l];
    w.varint(n);
    let prev = 0;
    for (let i = 0; i < n; i++) {
      w.varint(i === 0 ? pos[i] : zigzag(pos[i] - prev));
      prev = pos[i];
    }
    kvF32Bytes += 2 * n * kvDim * 4;
    for (const [name, rows] of [["K", kv.k[l]], ["V", kv.v[l]]] as const) {
      const data = rows.subarray(0, n * kvDim);
      if (precision === "f32") w.floats(bytesOf(data), 4, shuffle);
      else if (precision === "f16") w.floats(bytesOf(toF16Bits(data)), 2, shuffle);
      else {
        const { scales, q } = quantizeInt8(data, n, nHeads, headDim, `${name} of layer ${l}`);
        w.floats(bytesOf(scales), 4, shuffle);
        w.bytes(bytesOf(q));
      }
    }
  }
  const scores = s.policy.state.scores;
  w.varint(scores.length);
  for (const a of scores) {
    w.varint(a.length);
    w.floats(bytesOf(a), 4, shuffle);
  }
  w.varint(plan.json.length);
  w.bytes(plan.json);
  if (w.off !== plan.rawBytes) {
    throw new Error(`encodeSnapshot: internal size mismatch ${w.off} != ${plan.rawBytes}`);
  }

  const level = opts.level ?? 6;
  let payload = w.buf;
  let compressed = false;
  if (level > 0) {
    const c = new Uint8Array(zlib.deflateRawSync(w.buf, { level }));
    // Incompressible data (noise-like floats) is stored as is rather than grown by deflate's framing.
    if (c.length < w.buf.length) {
      payload = c;
      compressed = true;
    }
  }
  const headerLen = FIXED_HEADER + plan.fp.length;
  const out = new Uint8Array(headerLen + CRC_BYTES + payload.length);
  const dv = new DataView(out.buffer);
  out.set(SNAPSHOT_MAGIC, 0);
  dv.setUint16(4, SNAPSHOT_VERSION, true);
  out[6] = (compressed ? FLAG_DEFLATE : 0) | (shuffle ? FLAG_SHUFFLE : 0);
  out[7] = PRECISIONS.indexOf(precision);
  dv.setUint32(8, plan.rawBytes, true);
  dv.setUint32(12, payload.length, true);
  dv.setUint16(16, plan.fp.length, true);
  out.set(plan.fp, FIXED_HEADER);
  out.set(payload, headerLen + CRC_BYTES);
  dv.setUint32(headerLen, crc32(payload, crc32(out.subarray(0, headerLen))), true);
  return { bytes: out, rawBytes: plan.rawBytes, encodedBytes: out.length, kvF32Bytes, precision };
}

export function encodeSnapshot(s: SessionSnapshot, opts: EncodeOptions): Uint8Array {
  return encodeSnapshotWithStats(s, opts).bytes;
}

// ---------------------------------------------------------------------------------------------- decode

/**
 * Validate the envelope (magic, version, lengths, checksum; not the fingerprint) and return its fields,
 * without inflating the payload.
 */
export function readSnapshotHeader(bytes: Uint8Array): SnapshotHeader {
  if (!(bytes instanceof Uint8Array)) throw new SnapshotError("malformed", "input is not a Uint8Array");
  const m = SNAPSHOT_MAGIC;
  for (let i = 0; i < Math.min(m.length, bytes.length); i++) {
    if (bytes[i] !== m[i]) throw new SnapshotError("bad_magic", "not a Lethe session snapshot (bad magic)");
  }
  if (bytes.length < m.length) throw new SnapshotError("truncated", `only ${bytes.length} bytes`);
  if (bytes.length < 6) throw new SnapshotError("truncated", `only ${bytes.length} bytes (no version)`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = dv.getUint16(4, true);
  if (version !== SNAPSHOT_VERSION) {
    throw new SnapshotError("bad_version", `format version ${version}, this build reads ${SNAPSHOT_VERSION}`);
  }
  if (bytes.length < FIXED_HEADER) {
    throw new SnapshotError("truncated", `header cut short at ${bytes.length} bytes`);
  }
  const fpLen = dv.getUint16(16, true);
  const headerLen = FIXED_HEADER + fpLen;
  const compressedBytes = dv.getUint32(12, true);
  const total = headerLen + CRC_BYTES + compressedBytes;
  if (bytes.length < total) {
    throw new SnapshotError("truncated", `blob has ${bytes.length} bytes, header says ${total}`);
  }
  if (bytes.length > total) {
    throw new SnapshotError("malformed", `${bytes.length - total} trailing bytes after the payload`);
  }
  const stored = dv.getUint32(headerLen, true);
  const payload = bytes.subarray(headerLen + CRC_BYTES);
  const actual = crc32(payload, crc32(bytes.subarray(0, headerLen)));
  if (stored !== actual) {
    throw new SnapshotError(
      "checksum",
      `CRC-32 mismatch (stored ${hex32(stored)}, computed ${hex32(actual)})`,
    );
  }
  const flags = bytes[6];
  if (flags & ~KNOWN_FLAGS) throw new SnapshotError("malformed", `unknown flags 0x${flags.toString(16)}`);
  const precision = PRECISIONS[bytes[7]];
  if (!precision) throw new SnapshotError("malformed", `unknown KV precision code ${bytes[7]}`);
  let fingerprint: string;
  try {
    fingerprint = new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(FIXED_HEADER, headerLen));
  } catch {
    throw new SnapshotError("malformed", "fingerprint is not UTF-8");
  }
  return {
    version,
    precision,
    compressed: (flags & FLAG_DEFLATE) !== 0,
    shuffled: (flags & FLAG_SHUFFLE) !== 0,
    rawBytes: dv.getUint32(8, true),
    compressedBytes,
    fingerprint,
    encodedBytes: bytes.length,
  };
}

function hex32(v: number): string {
  return "0x" + v.toString(16).padStart(8, "0");
}

class Reader {
  off = 0;
  readonly dv: DataView;
  constructor(readonly buf: Uint8Array) {
    this.dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }
  get remaining(): number {
    return this.buf.length - this.off;
  }
  need(n: number, what: string): void {
    if (n > this.remaining) {
      throw new SnapshotError(
        "malformed",
        `${what} needs ${n} bytes, only ${this.remaining} remain in the payload`,
      );
    }
  }
  u32(what: string): number {
    this.need(4, what);
    const v = this.dv.getUint32(this.off, true);
    this.off += 4;
    return v;
  }
  varint(what: string): number {
    let v = 0, mul = 1;
    for (let i = 0; i < 5; i++) {
      this.need(1, what);
      const b = this.buf[this.off++];
      v += (b & 0x7f) * mul;
      if (!(b & 0x80)) {
        if (v > 0xffffffff) break;
        return v;
      }
      mul *= 128;
    }
    throw new SnapshotError("malformed", `bad varint for ${what}`);
  }
  /** A count of items of `itemBytes` each that must fit in what remains (checked before any allocation). */
  count(what: string, itemBytes: number): number {
    const n = this.varint(what);
    if (n * itemBytes > this.remaining) {
      throw new SnapshotError(
        "malformed",
        `${what} = ${n} needs ${n * itemBytes} bytes, ${this.remaining} remain`,
      );
    }
    return n;
  }
  take(n: number, what: string): Uint8Array {
    this.need(n, what);
    const b = this.buf.subarray(this.off, this.off + n);
    this.off += n;
    return b;
  }
  floats(dst: Float32Array | Uint16Array, what: string, shuffled: boolean): void {
    const width = dst.BYTES_PER_ELEMENT;
    const src = this.take(dst.length * width, what);
    const out = new Uint8Array(dst.buffer, dst.byteOffset, dst.byteLength);
    if (shuffled && width > 1) unshuffleBytes(src, width, out);
    else out.set(src);
  }
}

function inflate(h: SnapshotHeader, payload: Uint8Array, maxRaw: number): Uint8Array {
  if (h.rawBytes > maxRaw) {
    throw new SnapshotError("malformed", `payload claims ${h.rawBytes} bytes, limit is ${maxRaw}`);
  }
  if (!h.compressed) {
    if (h.rawBytes !== payload.length) {
      throw new SnapshotError(
        "malformed",
        `stored payload is ${payload.length} bytes, header says ${h.rawBytes}`,
      );
    }
    return payload;
  }
  if (h.rawBytes > payload.length * MAX_DEFLATE_RATIO + 1024) {
    throw new SnapshotError(
      "malformed",
      `payload claims ${h.rawBytes} bytes from ${payload.length} compressed: beyond deflate's ratio`,
    );
  }
  let out: Uint8Array;
  try {
    out = zlib.inflateRawSync(payload, { maxOutputLength: Math.max(1, h.rawBytes) });
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === "ERR_BUFFER_TOO_LARGE" || e instanceof RangeError) {
      throw new SnapshotError("malformed", `payload inflates beyond the ${h.rawBytes} bytes it claims`);
    }
    throw new SnapshotError("malformed", `payload does not inflate: ${(e as Error).message}`);
  }
  if (out.length !== h.rawBytes) {
    throw new SnapshotError(
      "malformed",
      `payload inflates to ${out.length} bytes, header says ${h.rawBytes}`,
    );
  }
  return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
}

export function decodeSnapshot(bytes: Uint8Array, expect?: DecodeExpect): SessionSnapshot {
  const h = readSnapshotHeader(bytes);
  if (expect?.fingerprint !== undefined && expect.fingerprint !== h.fingerprint) {
    throw new SnapshotError(
      "fingerprint_mismatch",
      `snapshot was made by model ${h.fingerprint.slice(0, 16)}…, this model is ${
        expect.fingerprint.slice(0, 16)
      }…`,
    );
  }
  const payload = bytes.subarray(bytes.length - h.compressedBytes);
  const raw = inflate(h, payload, expect?.maxRawBytes ?? DEFAULT_MAX_RAW);
  const r = new Reader(raw);
  const nLayers = r.u32("nLayers");
  const nKVHeads = r.u32("nKVHeads");
  const headDim = r.u32("headDim");
  const nextPos = r.u32("nextPos");
  if (
    nLayers > MAX_SHAPE_DIM || nKVHeads < 1 || nKVHeads > MAX_SHAPE_DIM || headDim < 1 ||
    headDim > MAX_SHAPE_DIM
  ) {
    throw new SnapshotError("malformed", `bad KV shape ${nLayers}×${nKVHeads}×${headDim}`);
  }
  const kvDim = nKVHeads * headDim;
  if (kvDim > MAX_KV_DIM) throw new SnapshotError("malformed", `kvDim ${kvDim} too large`);
  if (nextPos > 0x7fffffff) throw new SnapshotError("malformed", `bad nextPos ${nextPos}`);
  const nTokens = r.count("token count", 1);
  if (nTokens < nextPos) throw new SnapshotError("malformed", `${nTokens} tokens but nextPos is ${nextPos}`);
  const tokens = new Array<number>(nTokens);
  for (let i = 0; i < nTokens; i++) {
    const t = r.varint("token");
    if (t > 0x7fffffff) throw new SnapshotError("malformed", `token ${t} out of range`);
    tokens[i] = t;
  }
  const precision = h.precision;
  const rowBytes = precision === "f32" ? kvDim * 4 : precision === "f16" ? kvDim * 2 : kvDim + nKVHeads * 4;
  // Each layer needs at least its length varint.
  r.need(nLayers, "layer headers");
  const kv = new HostKVCache({ nLayers, nKVHeads, headDim }, 1);
  kv.nextPos = nextPos;
  for (let l = 0; l < nLayers; l++) {
    // Each row costs ≥ 1 position byte plus its K and V data.
    const n = r.count(`layer ${l} length`, 1 + 2 * rowBytes);
    const pos = new Int32Array(n);
    let prev = 0;
    for (let i = 0; i < n; i++) {
      const raw = r.varint(`layer ${l} position`);
      const p = i === 0 ? raw : prev + unzigzag(raw);
      if (p < 0 || p >= nextPos) {
        throw new SnapshotError("malformed", `layer ${l} position ${p} outside [0, nextPos=${nextPos})`);
      }
      pos[i] = p;
      prev = p;
    }
    const k = new Float32Array(n * kvDim);
    const v = new Float32Array(n * kvDim);
    for (const [name, dst] of [["K", k], ["V", v]] as const) {
      const what = `layer ${l} ${name}`;
      if (precision === "f32") r.floats(dst, what, h.shuffled);
      else if (precision === "f16") {
        const hb = new Uint16Array(n * kvDim);
        r.floats(hb, what, h.shuffled);
        fromF16Bits(hb, dst);
      } else {
        const scales = new Float32Array(n * nKVHeads);
        r.floats(scales, `${what} scales`, h.shuffled);
        const q = new Int8Array(r.take(n * kvDim, what).slice().buffer);
        for (let row = 0; row < n * nKVHeads; row++) {
          const sc = scales[row];
          if (!Number.isFinite(sc) || sc < 0) {
            throw new SnapshotError("malformed", `${what}: bad scale ${sc}`);
          }
          const base = row * headDim;
          for (let i = 0; i < headDim; i++) dst[base + i] = q[base + i] * sc;
        }
      }
    }
    kv.k[l] = k;
    kv.v[l] = v;
    kv.pos[l] = pos;
    kv.len[l] = n;
  }
  const nScores = r.count("policy score arrays", 1);
  const scores: Float32Array[] = [];
  for (let i = 0; i < nScores; i++) {
    const n = r.count(`policy scores[${i}] length`, 4);
    const a = new Float32Array(n);
    r.floats(a, `policy scores[${i}]`, h.shuffled);
    scores.push(a);
  }
  const jsonLen = r.count("JSON length", 1);
  const jsonBytes = r.take(jsonLen, "JSON");
  if (r.remaining !== 0) {
    throw new SnapshotError("malformed", `${r.remaining} unread bytes after the JSON part`);
  }
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(jsonBytes));
  } catch (e) {
    throw new SnapshotError("malformed", `JSON part does not parse: ${(e as Error).message}`);
  }
  if (!isPlainObject(json) || !isPlainObject(json.policy)) {
    throw new SnapshotError("malformed", "JSON part lacks policy");
  }
  const pol = json.policy;
  if (typeof pol.name !== "string" || !isPlainObject(pol.params) || !isPlainObject(pol.meta)) {
    throw new SnapshotError("malformed", "policy must have name (string), params and meta (objects)");
  }
  if (json.sampler !== undefined && !isPlainObject(json.sampler)) {
    throw new SnapshotError("malformed", "sampler state must be an object");
  }
  if (json.meta !== undefined && !isPlainObject(json.meta)) {
    throw new SnapshotError("malformed", "meta must be an object");
  }
  const out: SessionSnapshot = {
    fingerprint: h.fingerprint,
    tokens,
    kv,
    policy: { name: pol.name, params: pol.params, state: { scores, meta: pol.meta } },
  };
  if (json.sampler !== undefined) out.sampler = json.sampler as Record<string, unknown>;
  if (json.meta !== undefined) out.meta = json.meta as Record<string, unknown>;
  return out;
}
