/**
 * The TypeScript dequantizers (the oracle of every backend) against ggml's own: every tensor of every file in
 * ../shared/fixtures/kquant dequantizes bit for bit to the reference (SHA-256 of the f32 bytes, 48 sampled
 * values, sum and sum of squares).
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { resolve } from "node:path";
import { parseGGUF, readGGUFFile, tensorBytes } from "../src/model/gguf.ts";
import { ModelFormatError } from "../src/model/errors.ts";
import { dequantize, ggmlTypeName } from "../src/model/ggml.ts";
import { KQUANT_DIR, kquantFiles, readDequantRef, sampleIndices } from "./support/fixtures.ts";

const FILES = kquantFiles();

Deno.test("kquant fixtures: the folder holds every quant type llama-quantize made", () => {
  assert.deepEqual(FILES, [
    "kq-llama-IQ4_NL.gguf",
    "kq-llama-IQ4_XS.gguf",
    "kq-llama-Q2_K.gguf",
    "kq-llama-Q3_K_M.gguf",
    "kq-llama-Q4_0.gguf",
    "kq-llama-Q4_1.gguf",
    "kq-llama-Q4_K_M.gguf",
    "kq-llama-Q5_0.gguf",
    "kq-llama-Q5_1.gguf",
    "kq-llama-Q5_K_M.gguf",
    "kq-llama-Q6_K.gguf",
    "kq-llama-Q8_0.gguf",
    "kq-llama-d320-Q4_K_M.gguf",
  ]);
});

for (const file of FILES) {
  Deno.test(`dequantize ${file}: every tensor bit-identical to ggml's`, async () => {
    const ref = readDequantRef(file).tensors;
    const gguf = await readGGUFFile(resolve(KQUANT_DIR, file));
    assert.deepEqual(gguf.tensors.map((t) => t.name).sort(), Object.keys(ref).sort());
    const types = new Set<string>();
    for (const t of gguf.tensors) {
      const r = ref[t.name];
      assert.equal(ggmlTypeName(t.type), r.type, t.name);
      assert.deepEqual(t.shape.slice().reverse(), r.shape_gguf, t.name);
      assert.equal(t.nElements, r.elements, t.name);
      types.add(r.type);

      const v = dequantize(t.type, tensorBytes(gguf, t), t.nElements);
      assert.deepEqual(r.indices, sampleIndices(v.length), `${t.name}: index rule`);
      assert.deepEqual(r.indices.map((i) => v[i]), r.values, `${t.name}: sampled values`);
      const sha = createHash("sha256").update(new Uint8Array(v.buffer)).digest("hex");
      assert.equal(sha, r.sha256_f32le, `${t.name} (${r.type}): SHA-256 of the f32 values`);
      // float64 sums in another order than the reference's: equal to ~1e-12 relative
      let sum = 0, sumAbs = 0, sumSq = 0;
      for (const x of v) {
        sum += x;
        sumAbs += Math.abs(x);
        sumSq += x * x;
      }
      assert.ok(Math.abs(sum - r.sum) <= 1e-10 * sumAbs, `${t.name}: sum ${sum} vs ${r.sum}`);
      assert.ok(Math.abs(sumSq - r.sum_sq) <= 1e-10 * sumSq, `${t.name}: sum_sq ${sumSq} vs ${r.sum_sq}`);
    }
    assert.ok(types.size >= 2, `${file}: quantized and F32 tensors`);
  });
}

Deno.test("kquant fixtures: tensor byte sizes tile llama.cpp's data sections; a byte short is a clean error", async () => {
  for (const file of [...FILES, "kq-llama-f32.gguf"]) {
    const gguf = await readGGUFFile(resolve(KQUANT_DIR, file));
    const sorted = gguf.tensors.slice().sort((a, b) => a.offset - b.offset);
    let end = 0;
    for (const t of sorted) {
      assert.equal(t.offset, Math.ceil(end / gguf.alignment) * gguf.alignment, `${file} ${t.name}: offset`);
      end = t.offset + t.nBytes;
    }
    assert.equal(gguf.dataOffset + end, gguf.bytes.byteLength, `${file}: the last tensor ends the file`);
    assert.throws(() => parseGGUF(gguf.bytes.subarray(0, gguf.bytes.byteLength - 1)), (e) => {
      assert.ok(e instanceof ModelFormatError);
      assert.match(e.message, /is beyond the end of the file/);
      return true;
    });
  }
});
