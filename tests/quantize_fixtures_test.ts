/**
 * `quantize` against llama-quantize: quantizing ../shared/fixtures/kquant/kq-llama-f32.gguf to each fixture's
 * type gives llama-quantize's file byte for byte (tensor types, tensor bytes, order, metadata), and the
 * type rules give the types of the d320 fallback file and of real models' Q4_K_M downloads.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { resolve } from "node:path";
import { readGGUFFile, tensorBytes } from "../src/model/gguf.ts";
import { ggmlTypeName } from "../src/model/ggml.ts";
import { GGMLType } from "../src/model/types.ts";
import { quantizeGGUF, quantModelInfo } from "../src/cli/quantize.ts";
import { FILE_TYPES, fileTypeByName, planQuantization, useMoreBits } from "../src/model/quant/mix.ts";
import { QuantizePool } from "../src/model/quant/pool.ts";
import { headDimOf, SHAPES } from "../src/model/synthetic.ts";
import { syntheticTensors } from "../src/cli/make_model.ts";
import { KQUANT_DIR, KQUANT_F32, kquantFiles } from "./support/fixtures.ts";

const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

Deno.test("quantize kq-llama-f32.gguf: every fixture type reproduces llama-quantize's file byte for byte", async () => {
  const src = await readGGUFFile(KQUANT_F32);
  const dir = await Deno.makeTempDir();
  const pool = new QuantizePool(2);
  try {
    const types = kquantFiles().filter((f) => !f.includes("d320")).map((f) =>
      /^kq-llama-(.*)\.gguf$/.exec(f)![1]
    );
    assert.equal(types.length, 12);
    for (const type of types) {
      const want = await readGGUFFile(resolve(KQUANT_DIR, `kq-llama-${type}.gguf`));
      const out = resolve(dir, `${type}.gguf`);
      const r = await quantizeGGUF(src, out, { type, pool });
      const got = await readGGUFFile(out);
      assert.deepEqual(got.tensors.map((t) => t.name), want.tensors.map((t) => t.name), `${type}: order`);
      got.tensors.forEach((t, i) => {
        const w = want.tensors[i];
        assert.equal(ggmlTypeName(t.type), ggmlTypeName(w.type), `${type} ${t.name}: type`);
        assert.ok(sha256(tensorBytes(got, t)) === sha256(tensorBytes(want, w)), `${type} ${t.name}: bytes`);
      });
      assert.equal(sha256(got.bytes), sha256(want.bytes), `${type}: whole file`);
      assert.equal(r.fileType.ftype, FILE_TYPES[type.toLowerCase()].ftype);
    }
  } finally {
    pool.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("quantize type rules: kq-llama-d320-Q4_K_M's fallbacks (rows of 320 take 32-blocks)", async () => {
  const f = await readGGUFFile(resolve(KQUANT_DIR, "kq-llama-d320-Q4_K_M.gguf"));
  // the F32 original is not shipped: plan from the same names and shapes as F32 tensors
  const src = f.tensors.map((t) => ({ name: t.name, shape: t.shape, type: GGMLType.F32 }));
  const plan = planQuantization(src, quantModelInfo(f), fileTypeByName("q4_k_m")!);
  const want = new Map(f.tensors.map((t) => [t.name, ggmlTypeName(t.type)]));
  for (const p of plan) assert.equal(ggmlTypeName(p.target), want.get(p.name), p.name);
  assert.deepEqual(plan.map((p) => p.name), f.tensors.map((t) => t.name), "llama-quantize's order");
  const count = (t: string) => plan.filter((p) => ggmlTypeName(p.target) === t).length;
  assert.deepEqual([count("Q5_0"), count("Q4_K"), count("Q6_K"), count("Q8_0")], [12, 1, 1, 2]);
});

Deno.test("quantize type rules: real models' Q4_K_M tensor counts", () => {
  // Qwen2.5-0.5B-Instruct's count is a published dump (ollama#9031); the others follow llama-quantize's
  // rules as derived in ../shared/docs/real-models.md §1d
  const want: Record<string, Record<string, number>> = {
    "qwen2.5-0.5b": { F32: 121, Q5_0: 132, Q8_0: 13, Q4_K: 12, Q6_K: 12 },
    "smollm2-135m": { F32: 61, Q5_0: 166, Q8_0: 15, Q4_K: 16, Q6_K: 14 },
    "r1-distill-qwen-1.5b": { F32: 141, Q4_K: 169, Q6_K: 29 },
    "qwen3-0.6b": { F32: 113, Q4_K: 168, Q6_K: 29 },
    "llama-3.2-1b": { F32: 34, Q4_K: 96, Q6_K: 17 },
  };
  for (const [shape, counts] of Object.entries(want)) {
    const s = SHAPES[shape];
    const plan = planQuantization(
      syntheticTensors(s, GGMLType.F32),
      { arch: s.arch, nLayers: s.nLayers, nHead: s.nHeads, nHeadKV: s.nKVHeads },
      fileTypeByName("q4_k_m")!,
    );
    const got: Record<string, number> = {};
    for (const p of plan) got[ggmlTypeName(p.target)] = (got[ggmlTypeName(p.target)] ?? 0) + 1;
    assert.deepEqual(got, counts, `${shape} (head dim ${headDimOf(s)})`);
  }
});

Deno.test("quantize type rules: use_more_bits picks llama.cpp's layers", () => {
  const picked = (n: number) => Array.from({ length: n }, (_, i) => i).filter((i) => useMoreBits(i, n));
  assert.deepEqual(picked(2), [1]);
  assert.deepEqual(picked(24), [0, 1, 2, 5, 8, 11, 14, 17, 20, 21, 22, 23]);
  assert.deepEqual(picked(28), [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27]);
});

Deno.test("quantize CLI: --pure, requantizing needs --allow-requantize, one-line errors", async () => {
  const dir = await Deno.makeTempDir();
  const run = async (args: string[]) => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", resolve(import.meta.dirname!, "../src/cli/quantize.ts"), ...args],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const dec = new TextDecoder();
    return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  };
  try {
    const pure = resolve(dir, "pure.gguf");
    let r = await run(["--in", KQUANT_F32, "--out", pure, "--type", "q4_k_m", "--pure", "--threads", "1"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(
      r.stdout,
      /^quantize: Q4_K_M: 16\/21 tensors quantized \(Q4_K 16, F32 5\), 7\.36 MB -> 1\.\d+ MB in/,
    );
    const q8 = resolve(KQUANT_DIR, "kq-llama-Q8_0.gguf");
    r = await run(["--in", q8, "--out", resolve(dir, "re.gguf"), "--type", "q4_0"]);
    assert.equal(r.code, 1);
    assert.equal(r.stderr.trim().split("\n").length, 1);
    assert.match(r.stderr, /is already Q8_0: requantizing loses precision \(pass --allow-requantize/);
    r = await run(["--in", q8, "--out", resolve(dir, "re.gguf"), "--type", "q4_0", "--allow-requantize"]);
    assert.equal(r.code, 0, r.stderr);
    const re = await readGGUFFile(resolve(dir, "re.gguf"));
    assert.equal(re.tensors.find((t) => t.name === "blk.0.attn_q.weight")!.type, GGMLType.Q4_0);
    // a tensor that already has its target type is copied as it is
    const same = await readGGUFFile(q8);
    r = await run(["--in", q8, "--out", resolve(dir, "same.gguf"), "--type", "q8_0"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /: 0\/21 tensors quantized/);
    assert.equal(sha256(await Deno.readFile(resolve(dir, "same.gguf"))), sha256(same.bytes));
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name).sort(), [
      "pure.gguf",
      "re.gguf",
      "same.gguf",
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
