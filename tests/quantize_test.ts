import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { gguf } from "@huggingface/gguf";
import { GGMLType } from "../src/model/types.ts";
import { ModelFormatError } from "../src/model/errors.ts";
import { f16ToF32, f32ToF16 } from "../src/model/f16.ts";
import {
  bf16ToF32,
  dequantize,
  f32ToBF16,
  GGML_TYPES,
  ggmlTypeName,
  quantize,
  quantizeQ4_0,
  quantizeQ8_0,
  rowBytes,
} from "../src/model/ggml.ts";
import { metaValue, readGGUFFile, tensorBytes } from "../src/model/gguf.ts";
import { modelFromGGUF } from "../src/model/gguf_model.ts";

const ROOT = fileURLToPath(new URL("../", import.meta.url));
const STORIES = Deno.env.get("LETHE_MODEL") ?? `${ROOT}../shared/models/stories260K.gguf`;

Deno.test("rowBytes", () => {
  assert.equal(rowBytes(GGMLType.F32, 10), 40);
  assert.equal(rowBytes(GGMLType.F16, 10), 20);
  assert.equal(rowBytes(GGMLType.Q8_0, 64), 68);
  assert.equal(rowBytes(GGMLType.Q4_0, 64), 36);
  assert.equal(rowBytes(GGMLType.Q4_K, 256), 144);
  assert.throws(() => rowBytes(GGMLType.Q8_0, 33), /multiple of 32/);
});

Deno.test("F16 conversions: normal, subnormal, inf, nan, -0, rounding", () => {
  assert.equal(f16ToF32(0x3c00), 1);
  assert.equal(f16ToF32(0xc000), -2);
  assert.equal(f16ToF32(0x7bff), 65504);
  assert.equal(f16ToF32(0x0001), 5.960464477539063e-8); // smallest subnormal 2^-24
  assert.equal(f16ToF32(0x03ff), 6.097555160522461e-5); // largest subnormal
  assert.equal(f16ToF32(0x0400), 6.103515625e-5); // smallest normal
  assert.equal(f16ToF32(0x7c00), Infinity);
  assert.equal(f16ToF32(0xfc00), -Infinity);
  assert.ok(Number.isNaN(f16ToF32(0x7e00)));
  assert.ok(Object.is(f16ToF32(0x8000), -0));
  assert.equal(f32ToF16(1), 0x3c00);
  assert.equal(f32ToF16(-2), 0xc000);
  assert.equal(f32ToF16(65504), 0x7bff);
  assert.equal(f32ToF16(65519), 0x7bff); // below the rounding midpoint
  assert.equal(f32ToF16(65520), 0x7c00); // rounds to inf
  assert.equal(f32ToF16(1e6), 0x7c00);
  assert.equal(f32ToF16(Infinity), 0x7c00);
  assert.equal(f32ToF16(-Infinity), 0xfc00);
  const nan = f32ToF16(NaN);
  assert.equal(nan & 0x7c00, 0x7c00);
  assert.notEqual(nan & 0x3ff, 0);
  assert.equal(f32ToF16(-0), 0x8000);
  assert.equal(f32ToF16(0), 0x0000);
  assert.equal(f32ToF16(5.960464477539063e-8), 0x0001);
  assert.equal(f32ToF16(2 ** -25), 0x0000); // tie -> even (0)
  assert.equal(f32ToF16(2 ** -25 * 1.5), 0x0001);
  assert.equal(f32ToF16(3 * 2 ** -25), 0x0002); // tie between 1 and 2 -> even
  assert.equal(f32ToF16(6.097555160522461e-5), 0x03ff);
  assert.equal(f32ToF16(1 / 3), 0x3555);
  assert.equal(f32ToF16(1 + 2 ** -11), 0x3c00); // tie -> even
  assert.equal(f32ToF16(1 + 3 * 2 ** -11), 0x3c02); // tie -> even (up)
  for (let h = 0; h < 0x10000; h++) {
    if ((h & 0x7c00) === 0x7c00 && (h & 0x3ff)) continue; // NaNs
    assert.equal(f32ToF16(f16ToF32(h)), h);
  }
});

Deno.test("BF16 conversions: rounding, subnormal, inf, nan, -0", () => {
  assert.equal(bf16ToF32(0x3f80), 1);
  assert.equal(bf16ToF32(0xc040), -3);
  assert.equal(bf16ToF32(0x0001), 9.183549615799121e-41); // 2^-133
  assert.equal(bf16ToF32(0x7f80), Infinity);
  assert.equal(bf16ToF32(0xff80), -Infinity);
  assert.ok(Number.isNaN(bf16ToF32(0x7fc0)));
  assert.ok(Object.is(bf16ToF32(0x8000), -0));
  assert.equal(f32ToBF16(1), 0x3f80);
  assert.equal(f32ToBF16(1 + 2 ** -8), 0x3f80); // tie -> even
  assert.equal(f32ToBF16(1 + 3 * 2 ** -8), 0x3f82); // tie -> even (up)
  assert.equal(f32ToBF16(1 + 2 ** -8 + 2 ** -20), 0x3f81);
  assert.equal(f32ToBF16(Infinity), 0x7f80);
  assert.equal(f32ToBF16(-Infinity), 0xff80);
  assert.equal(f32ToBF16(-0), 0x8000);
  assert.equal(f32ToBF16(NaN) & 0x7fc0, 0x7fc0);
  assert.equal(f32ToBF16(9.183549615799121e-41), 0x0001);
});

Deno.test("dequantize F32/F16/BF16", () => {
  const f32 = new Uint8Array(new Float32Array([1.5, -0.25]).buffer);
  assert.deepEqual(Array.from(dequantize(GGMLType.F32, f32, 2)), [1.5, -0.25]);
  assert.deepEqual(Array.from(dequantize(GGMLType.F32, new Uint8Array([0, ...f32]).subarray(1), 2)), [
    1.5,
    -0.25,
  ]);
  const f16 = new Uint8Array([0x00, 0x3c, 0x00, 0xc0, 0x01, 0x00, 0x00, 0x7c]);
  assert.deepEqual(Array.from(dequantize(GGMLType.F16, f16, 4)), [1, -2, 2 ** -24, Infinity]);
  const bf16 = new Uint8Array([0x80, 0x3f, 0x40, 0xc0]);
  assert.deepEqual(Array.from(dequantize(GGMLType.BF16, bf16, 2)), [1, -3]);
});

Deno.test("dequantize Q8_0 hand-computed block", () => {
  const block = new Uint8Array(34);
  block[0] = 0x00; // d = f16 0x3800 = 0.5
  block[1] = 0x38;
  const qs = [1, -2, 127, -128, 0, 3];
  qs.forEach((q, j) => block[2 + j] = q & 0xff);
  const expected = new Array(32).fill(0);
  expected.splice(0, 6, 0.5, -1, 63.5, -64, 0, 1.5);
  assert.deepEqual(Array.from(dequantize(GGMLType.Q8_0, block, 32)), expected);
});

Deno.test("dequantize Q4_0 hand-computed block", () => {
  const block = new Uint8Array(18).fill(0x88); // nibble 8 -> 0
  block[0] = 0x00; // d = f16 0x3400 = 0.25
  block[1] = 0x34;
  block[2] = 0xf0; // element 0 = (0-8)*0.25 = -2, element 16 = (15-8)*0.25 = 1.75
  block[3] = 0x09; // element 1 = (9-8)*0.25 = 0.25, element 17 = (0-8)*0.25 = -2
  block[17] = 0xa7; // element 15 = (7-8)*0.25 = -0.25, element 31 = (10-8)*0.25 = 0.5
  const expected = new Array(32).fill(0);
  expected[0] = -2;
  expected[16] = 1.75;
  expected[1] = 0.25;
  expected[17] = -2;
  expected[15] = -0.25;
  expected[31] = 0.5;
  assert.deepEqual(Array.from(dequantize(GGMLType.Q4_0, block, 32)), expected);
});

Deno.test("quantizeQ8_0 / quantizeQ4_0 hand-computed blocks (ggml reference rounding)", () => {
  const x = new Float32Array(32);
  x.set([127, -127, 0.5, -0.5, 1.5, 2.4, -2.5]); // amax 127 -> d = 1
  const q8 = quantizeQ8_0(x);
  assert.deepEqual(Array.from(q8.subarray(0, 2)), [0x00, 0x3c]);
  assert.deepEqual(
    Array.from(new Int8Array(q8.buffer, 2, 7)),
    [127, -127, 1, -1, 2, 2, -3], // roundf: half away from zero
  );

  const y = new Float32Array(32);
  y.set([-8, 7, 0.4, 0.5, -0.5, 6.9, 7.6]); // signed max-magnitude -8 -> d = 1
  y[16] = -3;
  const q4 = quantizeQ4_0(y);
  assert.deepEqual(Array.from(q4.subarray(0, 2)), [0x00, 0x3c]);
  // q = min(15, trunc(x + 8.5)): -8->0, 7->15, 0.4->8, 0.5->9, -0.5->8, 6.9->15, 7.6->15 (clamped)
  const nibLo = Array.from(q4.subarray(2, 9), (b) => b & 15);
  assert.deepEqual(nibLo, [0, 15, 8, 9, 8, 15, 15]);
  assert.equal(q4[2] >> 4, 5); // element 16: -3 -> trunc(5.5) = 5
  assert.equal(q4[3] >> 4, 8); // element 17: 0 -> 8

  const z = new Float32Array(32);
  z[3] = 8; // positive max -> d = -1
  const qz = quantizeQ4_0(z);
  assert.equal(f16ToF32(qz[0] | (qz[1] << 8)), -1);
  assert.equal(dequantize(GGMLType.Q4_0, qz, 32)[3], 8);

  // all-zero block: d = 0, q = 0 / 8
  assert.deepEqual(
    Array.from(dequantize(GGMLType.Q8_0, quantizeQ8_0(new Float32Array(32)), 32)),
    new Array(32).fill(0),
  );
  // Q4_0: d = 0 / -8 = -0 as in ggml, so the values are (q-8) * -0 = ±0
  assert.ok(dequantize(GGMLType.Q4_0, quantizeQ4_0(new Float32Array(32)), 32).every((v) => v === 0));
  assert.throws(() => quantizeQ8_0(new Float32Array(31)), /multiple of 32/);
});

Deno.test("quantize -> dequantize error bounds", () => {
  let s = 12345;
  const rand = () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32) * 2 - 1;
  const n = 32 * 64;
  const x = new Float32Array(n).map((_, i) => rand() * (1 + (i >> 5) % 7));
  const q8 = dequantize(GGMLType.Q8_0, quantize(GGMLType.Q8_0, x), n);
  const q4 = dequantize(GGMLType.Q4_0, quantize(GGMLType.Q4_0, x), n);
  const f16 = dequantize(GGMLType.F16, quantize(GGMLType.F16, x), n);
  const bf16 = dequantize(GGMLType.BF16, quantize(GGMLType.BF16, x), n);
  for (let b = 0; b < n / 32; b++) {
    let amax = 0;
    for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[b * 32 + j]));
    for (let j = 0; j < 32; j++) {
      const i = b * 32 + j;
      assert.ok(Math.abs(q8[i] - x[i]) <= (amax / 127) * 0.5 + amax * 2 ** -10, `q8 ${i}`);
      assert.ok(Math.abs(q4[i] - x[i]) <= (amax / 8) * 1.0 + amax * 2 ** -9, `q4 ${i}`);
      assert.ok(Math.abs(f16[i] - x[i]) <= Math.abs(x[i]) * 2 ** -11, `f16 ${i}`);
      assert.ok(Math.abs(bf16[i] - x[i]) <= Math.abs(x[i]) * 2 ** -8, `bf16 ${i}`);
    }
  }
  const rms = (a: Float32Array) => Math.sqrt(a.reduce((acc, v, i) => acc + (v - x[i]) ** 2, 0) / n);
  assert.ok(rms(q8) < rms(q4) / 8, `q8 rms ${rms(q8)} q4 rms ${rms(q4)}`);
});

Deno.test("every block quantizer: round-trip error by bits, zero / tiny / constant blocks, bad lengths", () => {
  // relative RMS error of dequantize(quantize(x)) on normal data with 5 block scales; bounds ≈ 1.3 × measured
  const bounds: [GGMLType, number][] = [
    [GGMLType.Q8_0, 0.007],
    [GGMLType.Q8_1, 0.007],
    [GGMLType.Q8_K, 0.009],
    [GGMLType.Q6_K, 0.023],
    [GGMLType.Q5_K, 0.047],
    [GGMLType.Q5_1, 0.049],
    [GGMLType.Q5_0, 0.055],
    [GGMLType.Q4_K, 0.093],
    [GGMLType.IQ4_NL, 0.098],
    [GGMLType.IQ4_XS, 0.099],
    [GGMLType.Q4_1, 0.1],
    [GGMLType.Q4_0, 0.11],
    [GGMLType.Q3_K, 0.2],
    [GGMLType.Q2_K, 0.39],
  ];
  let s = 7;
  const rand = () => (s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32;
  const n = 256 * 64;
  const x = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const a = Math.sqrt(-2 * Math.log(rand() + 1e-12)),
      t = 2 * Math.PI * rand(),
      sc = 0.01 * (1 + ((i >> 8) % 5));
    x[i] = a * Math.cos(t) * sc;
    x[i + 1] = a * Math.sin(t) * sc;
  }
  const edge = new Float32Array(256 * 3);
  for (let i = 256; i < 512; i++) edge[i] = ((i % 7) - 3) * 1e-20; // below ggml's GROUP_MAX_EPS in most groups
  edge.fill(0.5, 512);
  for (const [type, bound] of bounds) {
    const name = ggmlTypeName(type);
    const y = dequantize(type, quantize(type, x), n);
    let e2 = 0, x2 = 0;
    for (let i = 0; i < n; i++) {
      e2 += (y[i] - x[i]) ** 2;
      x2 += x[i] ** 2;
    }
    assert.ok(Math.sqrt(e2 / x2) <= bound, `${name}: relative RMS error ${Math.sqrt(e2 / x2)} > ${bound}`);
    const z = dequantize(type, quantize(type, edge), edge.length);
    assert.ok(z.subarray(0, 256).every((v) => v === 0), `${name}: a zero block decodes to zeros`);
    assert.ok(z.subarray(256, 512).every((v) => Math.abs(v) <= 1e-19), `${name}: tiny values stay tiny`);
    assert.ok(z.subarray(512).every((v) => Math.abs(v - 0.5) <= 0.5 * 0.02), `${name}: a constant block`);
    const block = GGML_TYPES[type].blockSize;
    assert.throws(
      () => quantize(type, new Float32Array(block + 1)),
      new RegExp(`not a multiple of ${block}`),
    );
  }
});

Deno.test("dequantize: unsupported type and short buffers are clear errors", () => {
  assert.throws(() => dequantize(GGMLType.I32, new Uint8Array(16), 4), (e) => {
    assert.ok(e instanceof ModelFormatError);
    assert.match(e.message, /I32 is not supported \(supported: F32, F16, Q4_0, .*Q4_K.*IQ4_XS, BF16\)/);
    return true;
  });
  assert.throws(() => dequantize(GGMLType.Q4_K, new Uint8Array(143), 256), /need 144 bytes, got 143/);
  assert.throws(() => dequantize(GGMLType.Q6_K, new Uint8Array(210), 32), /multiple of 256/);
  assert.throws(() => dequantize(GGMLType.Q8_0, new Uint8Array(33), 32), /need 34 bytes, got 33/);
});

async function runCli(script: string, args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}src/cli/${script}`, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  return {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
}

Deno.test("quantize CLI: output readable by @huggingface/gguf with the same names/types/shapes", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const src = await readGGUFFile(STORIES);
    for (const [flag, type, ftype] of [["q8_0", GGMLType.Q8_0, 7], ["q4_0", GGMLType.Q4_0, 2]] as const) {
      const out = `${dir}/stories-${flag}.gguf`;
      const r = await runCli("quantize.ts", ["--in", STORIES, "--out", out, "--type", flag]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout.trim().split("\n").length, 1);
      assert.match(
        r.stdout,
        new RegExp(
          `quantize: ${flag.toUpperCase()}: 32/48 tensors quantized \\(.*F32 16.*\\), 1\\.19 MB -> 0\\.\\d+ MB in`,
        ),
      );

      const q = await readGGUFFile(out);
      // llama-quantize's rules: Q4_0 files get a Q6_K output, which falls back to Q8_0 for rows of 64;
      // ffn_down's rows of 172 fit no 32-block, so it stays F32
      const expectType = (name: string, shape: number[]) =>
        shape.length !== 2 || shape[1] % 32 !== 0 || name.endsWith("_norm.weight")
          ? GGMLType.F32
          : name === "output.weight"
          ? GGMLType.Q8_0
          : type;
      // independent reader
      const hf = await gguf(out, { allowLocalFile: true });
      assert.equal((hf.metadata as Record<string, unknown>)["general.file_type"], ftype);
      assert.equal((hf.metadata as Record<string, unknown>)["general.architecture"], "llama");
      assert.equal(hf.tensorInfos.length, src.tensors.length);
      // written in llama-quantize's order: non-layer tensors, then layer by layer, names sorted
      const layer = (n: string) => Number(/^blk\.(\d+)\./.exec(n)?.[1] ?? -1);
      const order = src.tensors.map((t) => t.name).sort((a, b) => layer(a) - layer(b) || (a < b ? -1 : 1));
      assert.deepEqual(hf.tensorInfos.map((t) => t.name), order);
      const srcByName = new Map(src.tensors.map((t) => [t.name, t]));
      hf.tensorInfos.forEach((t, i) => {
        const s = srcByName.get(t.name)!;
        assert.equal(t.dtype, expectType(s.name, s.shape), s.name);
        assert.deepEqual(t.shape.map(Number).reverse(), s.shape);
        assert.equal(Number(hf.tensorDataOffset) + Number(t.offset), q.dataOffset + q.tensors[i].offset);
      });
      assert.equal(metaValue(q, "general.file_type"), ftype);
      assert.deepEqual(metaValue(q, "tokenizer.ggml.tokens"), metaValue(src, "tokenizer.ggml.tokens"));
      // 1-D norms and ffn_down (inner dim 172) stay bit-identical F32; quantized weights are close
      const m = modelFromGGUF(q);
      assert.equal(m.weights.layers[0].wDown.type, GGMLType.F32);
      for (const b of q.tensors) {
        const a = srcByName.get(b.name)!;
        if (b.type === GGMLType.F32) {
          assert.deepEqual(tensorBytes(q, b), tensorBytes(src, a));
          continue;
        }
        const x = dequantize(a.type, tensorBytes(src, a), a.nElements);
        const y = dequantize(b.type, tensorBytes(q, b), b.nElements);
        let maxErr = 0, amax = 0;
        for (let j = 0; j < x.length; j++) {
          maxErr = Math.max(maxErr, Math.abs(x[j] - y[j]));
          amax = Math.max(amax, Math.abs(x[j]));
        }
        const tol = b.type === GGMLType.Q8_0 ? 0.0045 : 0.13;
        assert.ok(maxErr <= amax * tol, `${a.name} ${maxErr} vs ${amax}`);
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("quantize CLI: bad flags exit 2, bad input exit 1, one-line errors", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const garbage = `${dir}/garbage.gguf`;
    await Deno.writeFile(garbage, new TextEncoder().encode("not a gguf file at all"));
    const cases: [string[], number, RegExp][] = [
      [["--in", STORIES, "--out", `${dir}/o.gguf`], 2, /--type are required/],
      [["--in", STORIES, "--out", `${dir}/o.gguf`, "--type", "q9_k"], 2, /unknown --type "q9_k"/],
      [["--in", STORIES, "--out", `${dir}/o.gguf`, "--type", "q8_0", "--threads", "0"], 2, /--threads/],
      [["--bogus"], 2, /bogus/],
      [
        ["--in", `${dir}/missing.gguf`, "--out", `${dir}/o.gguf`, "--type", "q8_0"],
        1,
        /No such file|not found/i,
      ],
      [["--in", garbage, "--out", `${dir}/o.gguf`, "--type", "q8_0"], 1, /bad magic/],
    ];
    for (const [args, code, re] of cases) {
      const r = await runCli("quantize.ts", args);
      assert.equal(r.code, code, `${args.join(" ")}: ${r.stderr}`);
      assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
      assert.match(r.stderr, re);
    }
    // nothing was written (atomic: no output, no leftover temporary file)
    const names = [...Deno.readDirSync(dir)].map((e) => e.name);
    assert.deepEqual(names, ["garbage.gguf"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("make-model CLI: tiny f16 file through @huggingface/gguf", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const out = `${dir}/tiny.gguf`;
    const r = await runCli("make_model.ts", [
      "--shape",
      "tiny",
      "--out",
      out,
      "--type",
      "f16",
      "--seed",
      "3",
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /make-model: tiny f16 0\.\dM params/);
    const hf = await gguf(out, { allowLocalFile: true });
    assert.equal((hf.metadata as Record<string, unknown>)["llama.block_count"], 4);
    const emb = hf.tensorInfos.find((t) => t.name === "token_embd.weight")!;
    assert.equal(emb.dtype, GGMLType.F16);
    assert.deepEqual(emb.shape.map(Number), [128, 512]);
    const bad = await runCli("make_model.ts", ["--shape", "huge", "--out", out]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /unknown --shape "huge"/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
