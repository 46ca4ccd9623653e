import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { GGMLType } from "../src/model/types.ts";
import { ModelFormatError } from "../src/model/errors.ts";
import {
  type GGUFKV,
  GGUFValueType,
  metaValue,
  parseGGUF,
  plainMetadata,
  readGGUFFile,
  tensorBytes,
} from "../src/model/gguf.ts";
import { writeGGUF } from "../src/model/gguf_writer.ts";
import { modelFromGGUF } from "../src/model/gguf_model.ts";
import { makeModel } from "../src/cli/make_model.ts";

const ROOT = fileURLToPath(new URL("../", import.meta.url));
const STORIES = Deno.env.get("LETHE_MODEL") ?? `${ROOT}../shared/models/stories260K.gguf`;

const T = GGUFValueType;
const ALL_TYPES: Record<string, GGUFKV> = {
  "t.u8": { type: T.UINT8, value: 255 },
  "t.i8": { type: T.INT8, value: -128 },
  "t.u16": { type: T.UINT16, value: 65535 },
  "t.i16": { type: T.INT16, value: -32768 },
  "t.u32": { type: T.UINT32, value: 4294967295 },
  "t.i32": { type: T.INT32, value: -2147483648 },
  "t.f32": { type: T.FLOAT32, value: 1.5 },
  "t.f64": { type: T.FLOAT64, value: Math.PI },
  "t.bool_t": { type: T.BOOL, value: true },
  "t.bool_f": { type: T.BOOL, value: false },
  "t.str": { type: T.STRING, value: "héllo ▁world 🦙" },
  "t.empty_str": { type: T.STRING, value: "" },
  "t.u64": { type: T.UINT64, value: 2n ** 64n - 1n },
  "t.i64": { type: T.INT64, value: -(2n ** 63n) },
  "t.arr_u8": { type: T.ARRAY, value: { itemType: T.UINT8, items: [0, 1, 255] } },
  "t.arr_f32": { type: T.ARRAY, value: { itemType: T.FLOAT32, items: [0.5, -2, 1e-3].map(Math.fround) } },
  "t.arr_str": { type: T.ARRAY, value: { itemType: T.STRING, items: ["a", "", "▁b"] } },
  "t.arr_i64": { type: T.ARRAY, value: { itemType: T.INT64, items: [-1n, 5n] } },
  "t.arr_bool": { type: T.ARRAY, value: { itemType: T.BOOL, items: [true, false] } },
  "t.arr_empty": { type: T.ARRAY, value: { itemType: T.UINT32, items: [] } },
  "t.nested": {
    type: T.ARRAY,
    value: {
      itemType: T.ARRAY,
      items: [
        { itemType: T.INT32, items: [1, -2, 3] },
        { itemType: T.STRING, items: ["x"] },
        { itemType: T.ARRAY, items: [{ itemType: T.UINT16, items: [7] }] },
      ],
    },
  },
};

function smallTensors() {
  const a = new Float32Array(64).map((_, i) => i - 32);
  const b = new Float32Array(3).fill(1);
  return [
    { name: "a.weight", type: GGMLType.F32, shape: [2, 32], data: new Uint8Array(a.buffer) },
    { name: "b.weight", type: GGMLType.F32, shape: [3], data: new Uint8Array(b.buffer) },
  ];
}

for (const version of [2, 3] as const) {
  Deno.test(`writer -> parser round trip of every metadata type (v${version})`, () => {
    const bytes = writeGGUF({ metadata: ALL_TYPES, tensors: smallTensors(), version });
    const f = parseGGUF(bytes);
    assert.equal(f.version, version);
    assert.equal(f.alignment, 32);
    assert.deepEqual({ ...f.metadata }, ALL_TYPES);
    assert.deepEqual(f.tensors.map((t) => [t.name, t.type, t.shape, t.offset]), [
      ["a.weight", GGMLType.F32, [2, 32], 0],
      ["b.weight", GGMLType.F32, [3], 256],
    ]);
    assert.equal(f.dataOffset % 32, 0);
    const a = new Float32Array(tensorBytes(f, f.tensors[0]).slice().buffer);
    assert.equal(a[0], -32);
    assert.equal(a[63], 31);
    // tensorBytes is a view, not a copy
    assert.equal(tensorBytes(f, f.tensors[0]).buffer, bytes.buffer);
    // writing the parsed file again gives identical bytes
    const again = writeGGUF({
      metadata: f.metadata,
      tensors: f.tensors.map((t) => ({ ...t, data: tensorBytes(f, t) })),
      version,
    });
    assert.deepEqual(again, bytes);
    assert.deepEqual(metaValue(f, "t.nested"), [[1, -2, 3], ["x"], [[7]]]);
    assert.equal(plainMetadata(f)["t.u64"], 2n ** 64n - 1n);
  });
}

Deno.test("custom alignment is recorded and honoured", () => {
  const bytes = writeGGUF({ metadata: {}, tensors: smallTensors(), alignment: 64 });
  const f = parseGGUF(bytes);
  assert.equal(f.alignment, 64);
  assert.equal(f.dataOffset % 64, 0);
  assert.equal(f.tensors[1].offset, 256);
  assert.deepEqual(f.metadata["general.alignment"], { type: T.UINT32, value: 64 });
});

Deno.test("real stories260K.gguf: arch and shape facts, byte-exact rewrite", async () => {
  const f = await readGGUFFile(STORIES);
  assert.equal(f.version, 3);
  assert.equal(metaValue(f, "general.architecture"), "llama");
  assert.equal(metaValue(f, "llama.block_count"), 5);
  assert.equal(metaValue(f, "llama.embedding_length"), 64);
  assert.equal(metaValue(f, "llama.attention.head_count"), 8);
  assert.equal(metaValue(f, "llama.attention.head_count_kv"), 4);
  assert.equal((metaValue(f, "tokenizer.ggml.tokens") as string[]).length, 512);
  assert.equal(f.tensors.length, 48);
  assert.ok(f.tensors.every((t) => t.type === GGMLType.F32));
  const emb = f.tensors.find((t) => t.name === "token_embd.weight")!;
  assert.deepEqual(emb.shape, [512, 64]);
  const q = f.tensors.find((t) => t.name === "blk.0.attn_k.weight")!;
  assert.deepEqual(q.shape, [32, 64]);

  const m = modelFromGGUF(f);
  assert.deepEqual(m.config, {
    arch: "llama",
    dim: 64,
    nLayers: 5,
    nHeads: 8,
    nKVHeads: 4,
    headDim: 8,
    ffnDim: 172,
    vocabSize: 512,
    contextLength: 2048,
    normEps: Math.fround(1e-5),
    ropeTheta: 10000,
    ropeStyle: "interleaved",
    bosId: 1,
    eosId: 2,
  });
  assert.equal(m.metadata["llama.context_length"], 2048);
  assert.equal(m.weights.layers.length, 5);
  assert.deepEqual(m.weights.layers[4].wDown.shape, [64, 172]);
  assert.notEqual(m.weights.output, m.weights.tokenEmbd); // stories260K stores output.weight separately
  assert.equal(m.weights.layers[0].bq, undefined);

  const again = writeGGUF({
    metadata: f.metadata,
    tensors: f.tensors.map((t) => ({ ...t, data: tensorBytes(f, t) })),
  });
  assert.deepEqual(again, f.bytes);
});

Deno.test("modelFromGGUF: tied output, qwen2 biases + half RoPE, clear errors", async () => {
  const f = await readGGUFFile(STORIES);
  const tensorsOf = (file: typeof f, drop: (n: string) => boolean = () => false) =>
    file.tensors.filter((t) => !drop(t.name)).map((t) => ({ ...t, data: tensorBytes(file, t) }));

  const tied = modelFromGGUF(parseGGUF(writeGGUF({
    metadata: f.metadata,
    tensors: tensorsOf(f, (n) => n === "output.weight"),
  })));
  assert.equal(tied.weights.output, tied.weights.tokenEmbd);

  // qwen2: rename the arch keys and add biases
  const meta: Record<string, GGUFKV> = {};
  for (const [k, v] of Object.entries(f.metadata)) meta[k.replace(/^llama\./, "qwen2.")] = v;
  meta["general.architecture"] = { type: T.STRING, value: "qwen2" };
  const biases = [];
  for (let l = 0; l < 5; l++) {
    for (const [n, d] of [["q", 64], ["k", 32], ["v", 32]] as const) {
      biases.push({
        name: `blk.${l}.attn_${n}.bias`,
        type: GGMLType.F32,
        shape: [d],
        data: new Uint8Array(d * 4),
      });
    }
  }
  const qwen = modelFromGGUF(parseGGUF(writeGGUF({ metadata: meta, tensors: [...tensorsOf(f), ...biases] })));
  assert.equal(qwen.config.ropeStyle, "half");
  assert.deepEqual(qwen.weights.layers[3].bk?.shape, [32]);

  const bad = (metadata: Record<string, GGUFKV>, tensors: ReturnType<typeof tensorsOf>, re: RegExp) =>
    assert.throws(() => modelFromGGUF(parseGGUF(writeGGUF({ metadata, tensors }))), (e) => {
      assert.ok(e instanceof ModelFormatError, String(e));
      assert.match(e.message, re);
      return true;
    });
  bad(
    { ...f.metadata, "general.architecture": { type: T.STRING, value: "gpt2" } },
    tensorsOf(f),
    /unsupported architecture "gpt2"/,
  );
  bad(f.metadata, tensorsOf(f, (n) => n === "blk.3.ffn_up.weight"), /missing tensor "blk.3.ffn_up.weight"/);
  bad(
    { ...f.metadata, "llama.feed_forward_length": { type: T.UINT32, value: 128 } },
    tensorsOf(f),
    /shape \[172,64\], expected \[128,64\]/,
  );
  const { ["llama.block_count"]: _drop, ...noBlocks } = f.metadata;
  bad(noBlocks, tensorsOf(f), /missing metadata key "llama.block_count"/);
});

// ------------------------------------------------------------------------------------------------------
// Malformed inputs

class Bytes {
  parts: number[] = [];
  u32(v: number) {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, v, true);
    this.parts.push(...b);
    return this;
  }
  u64(v: bigint | number) {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, BigInt(v), true);
    this.parts.push(...b);
    return this;
  }
  str(s: string, lieLen?: bigint) {
    const b = new TextEncoder().encode(s);
    this.u64(lieLen ?? BigInt(b.length));
    this.parts.push(...b);
    return this;
  }
  raw(...b: number[]) {
    this.parts.push(...b);
    return this;
  }
  pad(a = 32) {
    while (this.parts.length % a) this.parts.push(0);
    return this;
  }
  zeros(n: number) {
    for (let i = 0; i < n; i++) this.parts.push(0);
    return this;
  }
  get bytes() {
    return new Uint8Array(this.parts);
  }
}

const head = (nTensors: number | bigint, nKV: number | bigint, version = 3) =>
  new Bytes().raw(0x47, 0x47, 0x55, 0x46).u32(version).u64(nTensors).u64(nKV);
/** A tensor info: dims innermost first. */
const tinfo = (b: Bytes, name: string, dims: (number | bigint)[], type: number, offset: number) => {
  b.str(name).u32(dims.length);
  for (const d of dims) b.u64(d);
  return b.u32(type).u64(offset);
};

function tinyFile(): Uint8Array {
  return writeGGUF({
    metadata: { "general.architecture": { type: T.STRING, value: "llama" }, ...ALL_TYPES },
    tensors: smallTensors(),
  });
}

const CASES: { name: string; bytes: () => Uint8Array; re: RegExp }[] = [
  { name: "empty file", bytes: () => new Uint8Array(0), re: /truncated: magic .* at byte offset 0/ },
  {
    name: "bad magic",
    bytes: () => new Bytes().raw(0x47, 0x47, 0x4d, 0x4c).u32(3).u64(0).u64(0).bytes,
    re: /bad magic 0x4c4d4747 .*offset 0/,
  },
  { name: "version 1", bytes: () => head(0, 0, 1).bytes, re: /unsupported GGUF version 1 .*offset 4/ },
  { name: "version 4", bytes: () => head(0, 0, 4).bytes, re: /unsupported GGUF version 4/ },
  {
    name: "big-endian version",
    bytes: () => head(0, 0, 0x03000000).bytes,
    re: /version 50331648 \(a big-endian file\?\)/,
  },
  {
    name: "lying key length 2^62",
    bytes: () => head(0, 1).str("abc", 2n ** 62n).u32(T.UINT8).raw(1).bytes,
    re: /metadata key #0 length 4611686018427387904 is impossible .*offset 24/,
  },
  {
    name: "lying string value length 2^62",
    bytes: () => head(0, 1).str("k").u32(T.STRING).str("xyz", 2n ** 62n).bytes,
    re: /value of "k" length 4611686018427387904 is impossible/,
  },
  {
    name: "lying string length just past the end",
    bytes: () => head(0, 1).str("k").u32(T.STRING).str("xyz", 12n).bytes,
    re: /value of "k" length 12 is impossible/,
  },
  {
    name: "lying array length",
    bytes: () => head(0, 1).str("k").u32(T.ARRAY).u32(T.UINT32).u64(1n << 40n).u32(1).bytes,
    re: /value of "k" array length 1099511627776 is impossible/,
  },
  {
    name: "lying array-of-strings length",
    bytes: () => head(0, 1).str("k").u32(T.ARRAY).u32(T.STRING).u64(1000).str("a").bytes,
    re: /array length 1000 is impossible/,
  },
  {
    name: "arrays nested too deep",
    bytes: () => {
      const b = head(0, 1).str("k").u32(T.ARRAY);
      for (let i = 0; i < 20; i++) b.u32(T.ARRAY).u64(1);
      return b.u32(T.UINT8).u64(0).bytes;
    },
    re: /arrays nested deeper than 8/,
  },
  {
    name: "huge tensor count",
    bytes: () => head(2n ** 60n, 0).zeros(64).bytes,
    re: /tensor count 1152921504606846976 is impossible .*offset 8/,
  },
  {
    name: "huge kv count",
    bytes: () => head(0, 2n ** 63n).zeros(64).bytes,
    re: /metadata kv count 9223372036854775808 is impossible .*offset 16/,
  },
  {
    name: "unknown value type",
    bytes: () => head(0, 1).str("k").u32(13).u32(0).bytes,
    re: /unknown metadata value type 13 for key "k" at byte offset 33/,
  },
  {
    name: "unknown array item type",
    bytes: () => head(0, 1).str("k").u32(T.ARRAY).u32(99).u64(0).bytes,
    re: /unknown array item value type 99/,
  },
  {
    name: "bool out of range",
    bytes: () => head(0, 1).str("k").u32(T.BOOL).raw(7).bytes,
    re: /bool value 7/,
  },
  {
    name: "duplicate metadata key",
    bytes: () => head(0, 2).str("k").u32(T.UINT8).raw(1).str("k").u32(T.UINT8).raw(2).bytes,
    re: /duplicate metadata key "k"/,
  },
  {
    name: "alignment not a power of two",
    bytes: () => head(0, 1).str("general.alignment").u32(T.UINT32).u32(24).bytes,
    re: /general.alignment 24 is not a positive power of two/,
  },
  {
    name: "unknown tensor type",
    bytes: () => tinfo(head(1, 0), "w", [32], 99, 0).pad().zeros(128).bytes,
    re: /unknown tensor type 99 for tensor "w"/,
  },
  {
    name: "n_dims 5",
    bytes: () => tinfo(head(1, 0), "w", [1, 1, 1, 1, 1], 0, 0).pad().zeros(64).bytes,
    re: /tensor "w" has n_dims 5 \(must be 1..4\)/,
  },
  {
    name: "n_dims 0",
    bytes: () => tinfo(head(1, 0), "w", [], 0, 0).zeros(40).pad().zeros(64).bytes,
    re: /n_dims 0/,
  },
  {
    name: "zero dim",
    bytes: () => tinfo(head(1, 0), "w", [4, 0], 0, 0).pad().zeros(64).bytes,
    re: /tensor "w" has a zero dim 1/,
  },
  {
    name: "overflowing dims",
    bytes: () => tinfo(head(1, 0), "w", [2n ** 32n, 2n ** 32n], 0, 0).pad().zeros(64).bytes,
    re: /tensor "w" dims overflow/,
  },
  {
    name: "quantized inner dim not a block multiple",
    bytes: () => tinfo(head(1, 0), "w", [33], GGMLType.Q8_0, 0).pad().zeros(128).bytes,
    re: /inner dim 33 is not a multiple of the Q8_0 block size 32/,
  },
  {
    name: "K-quant inner dim not a multiple of 256",
    bytes: () => tinfo(head(1, 0), "w", [320, 2], GGMLType.Q4_K, 0).pad().zeros(1024).bytes,
    re: /inner dim 320 is not a multiple of the Q4_K block size 256/,
  },
  {
    name: "IQ4_XS tensor longer than the file",
    bytes: () => tinfo(head(1, 0), "w", [256, 4], GGMLType.IQ4_XS, 0).pad().zeros(543).bytes,
    re: /tensor "w" data \[\d+, \d+\) is beyond the end of the file/,
  },
  {
    // two Q4_K rows take 288 bytes; the same dims claimed as Q6_K need 420 and run into the next tensor
    name: "tensor type claiming more bytes than its slot",
    bytes: () =>
      tinfo(tinfo(head(2, 0), "a", [256, 2], GGMLType.Q6_K, 0), "b", [32], GGMLType.Q8_0, 288).pad().zeros(
        1024,
      )
        .bytes,
    re: /tensor "b" overlaps tensor "a"/,
  },
  {
    name: "tensor data beyond EOF",
    bytes: () => tinfo(head(1, 0), "w", [64, 64], 0, 0).pad().zeros(1000).bytes,
    re: /tensor "w" data \[\d+, \d+\) is beyond the end of the file/,
  },
  {
    name: "huge tensor offset",
    bytes: () => tinfo(head(1, 0), "w", [8], 0, 2 ** 52).pad().zeros(64).bytes,
    re: /beyond the end of the file/,
  },
  {
    name: "misaligned offset",
    bytes: () => tinfo(head(1, 0), "w", [8], 0, 4).pad().zeros(64).bytes,
    re: /tensor "w" offset 4 is misaligned \(alignment 32\)/,
  },
  {
    name: "duplicate tensor name",
    bytes: () => tinfo(tinfo(head(2, 0), "w", [8], 0, 0), "w", [8], 0, 32).pad().zeros(64).bytes,
    re: /duplicate tensor name "w"/,
  },
  {
    name: "overlapping tensors",
    bytes: () => tinfo(tinfo(head(2, 0), "a", [16], 0, 0), "b", [8], 0, 32).pad().zeros(128).bytes,
    re: /tensor "b" overlaps tensor "a"/,
  },
];

for (const c of CASES) {
  Deno.test(`malformed GGUF: ${c.name}`, () => {
    const bytes = c.bytes();
    const t0 = performance.now();
    assert.throws(() => parseGGUF(bytes), (e) => {
      assert.ok(e instanceof ModelFormatError, `expected ModelFormatError, got ${e}`);
      assert.equal(e.name, "ModelFormatError");
      assert.match(e.message, c.re);
      assert.match(e.message, /at byte offset \d+/);
      return true;
    });
    assert.ok(performance.now() - t0 < 250, "must fail fast");
  });
}

Deno.test("malformed GGUF: truncated at many offsets of a real small file", () => {
  const full = tinyFile();
  const f = parseGGUF(full);
  const cuts = new Set<number>([0, 1, 3, 4, 5, 8, 12, 16, 20, 24, 25, 31, 32, 40, 47]);
  for (let c = 48; c < f.dataOffset; c += 13) cuts.add(c);
  for (const c of [f.dataOffset - 1, f.dataOffset, f.dataOffset + 1, full.length - 1]) cuts.add(c);
  const t0 = performance.now();
  for (const cut of cuts) {
    assert.throws(() => parseGGUF(full.subarray(0, cut)), (e) => {
      assert.ok(e instanceof ModelFormatError, `cut ${cut}: ${e}`);
      assert.match(e.message, /truncated|beyond the end of the file/, `cut ${cut}: ${e.message}`);
      return true;
    });
  }
  assert.ok(cuts.size > 40);
  assert.ok(performance.now() - t0 < 1000);
  parseGGUF(full); // the whole file is fine
});

Deno.test("malformed GGUF: every single-byte corruption of the header fails cleanly or parses", () => {
  const full = tinyFile();
  const f = parseGGUF(full);
  const buf = full.slice();
  for (let i = 0; i < f.dataOffset; i++) {
    for (const v of [0x00, 0xff, 0x7f]) {
      const old = buf[i];
      buf[i] = v;
      try {
        parseGGUF(buf);
      } catch (e) {
        assert.ok(e instanceof ModelFormatError, `byte ${i} = ${v}: ${e}`);
      }
      buf[i] = old;
    }
  }
});

Deno.test("make-model tiny loads through parseGGUF + modelFromGGUF", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/tiny.gguf`;
    const r = await makeModel({ shape: "tiny", out: path, type: "q8_0", seed: 7 });
    const f = await readGGUFFile(path);
    assert.equal(f.bytes.byteLength, r.bytes);
    const m = modelFromGGUF(f);
    assert.deepEqual(m.config, {
      arch: "llama",
      dim: 128,
      nLayers: 4,
      nHeads: 4,
      nKVHeads: 2,
      headDim: 32,
      ffnDim: 384,
      vocabSize: 512,
      contextLength: 2048,
      normEps: Math.fround(1e-5),
      ropeTheta: 10000,
      ropeStyle: "interleaved",
      bosId: 1,
      eosId: 2,
    });
    assert.equal(m.weights.output, m.weights.tokenEmbd);
    assert.equal(m.weights.layers[0].wq.type, GGMLType.Q8_0);
    assert.equal(m.weights.layers[0].attnNorm.type, GGMLType.F32);
    assert.ok(new Float32Array(m.weights.outputNorm.data.slice().buffer).every((x) => x === 1));
    assert.equal(m.metadata["general.file_type"], 7);
    const tokens = m.metadata["tokenizer.ggml.tokens"] as string[];
    const types = m.metadata["tokenizer.ggml.token_type"] as number[];
    assert.equal(tokens.length, 512);
    assert.equal(new Set(tokens).size, 512);
    assert.deepEqual(tokens.slice(0, 4), ["<unk>", "<s>", "</s>", "<0x00>"]);
    assert.equal(tokens[258], "<0xFF>");
    assert.equal(types[3], 6);
    assert.equal(tokens[259], "▁");
    assert.equal(m.metadata["tokenizer.ggml.model"], "llama");
    // seeded: same seed, same bytes; other seed, other weights; --ctx overrides the context length
    const again = `${dir}/again.gguf`;
    await makeModel({ shape: "tiny", out: again, type: "q8_0", seed: 7 });
    assert.deepEqual(await Deno.readFile(again), f.bytes);
    await makeModel({ shape: "tiny", out: again, type: "f32", seed: 8, ctx: 512 });
    const g = await readGGUFFile(again);
    assert.equal(modelFromGGUF(g).config.contextLength, 512);
    const w = new Float32Array(tensorBytes(g, g.tensors[1 + 1]).slice().buffer); // blk.0.attn_q.weight
    const mean = w.reduce((a, b) => a + b, 0) / w.length;
    const std = Math.sqrt(w.reduce((a, b) => a + (b - mean) ** 2, 0) / w.length);
    assert.ok(Math.abs(mean) < 0.002 && Math.abs(std - 0.02) < 0.001, `mean ${mean} std ${std}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
