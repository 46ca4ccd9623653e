/**
 * A scripted model for end-to-end tests of the API with real vocabularies and chat templates: a two-layer GGUF
 * in a vocabulary family of src/model/synthetic.ts (its real special-token ids and its chat template) whose
 * greedy continuation is a given script, token by token.
 *
 * How: the FFN writes nothing back (ffn_down is zero) and attention only a little (attn_output is small), so
 * the last layer's state is nearly the embedding of the current token and the next token depends on that
 * token alone. Every script token gets its own random unit embedding, and the output row of each token is the
 * embedding of the token it follows, so token a is followed by b with a logit margin of ~√dim · gain. q/k/v
 * are random and the first layer's attention reaches the second's, so the cache holds real rows that depend on
 * the tokens before them and their positions. A script is `[trigger, t1, t2, …]`: when the last token is the
 * trigger the model says t1 t2 …; its tokens must be distinct (across all scripts too).
 */
import { resolve } from "node:path";
import { GGMLType } from "../../src/model/types.ts";
import { Rng, syntheticMetadata, syntheticTensors } from "../../src/cli/make_model.ts";
import type { ModelShape } from "../../src/model/synthetic.ts";
import { writeGGUFFile } from "../../src/model/gguf_writer.ts";
import { tokenizerFromGGUFMetadata } from "../../src/model/tokenizer/from_gguf.ts";
import type { Tokenizer } from "../../src/model/tokenizer/types.ts";

export interface ScriptedModelSpec {
  /** A vocabulary family of src/model/synthetic.ts (FAMILIES), e.g. "r1-distill-qwen", "qwen3", "qwen2.5". */
  family: string;
  /** Each script: the trigger token's text, then the texts of the tokens said after it (one token each). */
  scripts: string[][];
  dim?: number;
  /** Output gain (the margin of the scripted token over any other). */
  gain?: number;
  /** Standard deviation of attn_output (how much attention changes the state; default 0.002). */
  mix?: number;
  seed?: number;
}

/** The real vocabulary size of each family (the synthetic shapes'). */
const VOCAB: Record<string, number> = {
  "r1-distill-qwen": 151936,
  qwen3: 151936,
  "qwen2.5": 151936,
  llama3: 128256,
  smollm2: 49152,
};

/** The one id of a token text (special tokens by their text, others by tokenizing it without splitting). */
function idOf(tok: Tokenizer, text: string): number {
  const special = tok.tokenId(text);
  if (special >= 0) return special;
  const ids = tok.encode(text, { parseSpecial: true });
  if (ids.length !== 1) throw new Error(`scripted model: "${text}" is ${ids.length} tokens, not one`);
  return ids[0];
}

/** Write the scripted model to `path`; returns the token ids of each script. */
export async function writeScriptedModel(path: string, spec: ScriptedModelSpec): Promise<number[][]> {
  const dim = spec.dim ?? 32, gain = spec.gain ?? 2;
  const shape: ModelShape = {
    arch: "llama",
    nLayers: 2,
    dim,
    nHeads: 2,
    nKVHeads: 1,
    ffnDim: dim,
    vocabSize: VOCAB[spec.family] ?? 151936,
    contextLength: 4096,
    ropeTheta: 10000,
    normEps: 1e-6,
    tied: false,
    family: spec.family,
  };
  const metadata = await syntheticMetadata(`scripted-${spec.family}`, shape, 0);
  const plain = Object.fromEntries(
    Object.entries(metadata).map(([k, v]) => {
      const val = v.value as { items?: unknown[] };
      return [k, val && typeof val === "object" && Array.isArray(val.items) ? val.items : v.value];
    }),
  );
  const tok = tokenizerFromGGUFMetadata(plain);
  const scripts = spec.scripts.map((s) => s.map((t) => idOf(tok, t)));
  const next = new Map<number, number>();
  for (const ids of scripts) {
    for (let i = 0; i + 1 < ids.length; i++) {
      if (next.has(ids[i])) throw new Error(`scripted model: token ${ids[i]} is said twice`);
      next.set(ids[i], ids[i + 1]);
    }
  }
  // Unit embeddings: one of a pool of 256 for every token, an own one for each script token.
  const V = shape.vocabSize, POOL = 256, own = [...new Set(scripts.flat())];
  const vectors = new Float32Array((POOL + own.length) * dim);
  new Rng(spec.seed ?? 1).fillNormal(vectors, 1);
  for (let r = 0; r < vectors.length / dim; r++) {
    const row = vectors.subarray(r * dim, (r + 1) * dim);
    const norm = Math.hypot(...row);
    for (let i = 0; i < dim; i++) row[i] /= norm;
  }
  const embd = new Float32Array(V * dim);
  for (let t = 0; t < V; t++) embd.set(vectors.subarray((t % POOL) * dim, (t % POOL + 1) * dim), t * dim);
  own.forEach((t, k) => embd.set(vectors.subarray((POOL + k) * dim, (POOL + k + 1) * dim), t * dim));
  const out = new Float32Array(V * dim);
  for (const [a, b] of next) {
    for (let i = 0; i < dim; i++) out[b * dim + i] += gain * embd[a * dim + i];
  }
  const tensors = syntheticTensors(shape, GGMLType.F32);
  await writeGGUFFile(path, { metadata, tensors }, (i, desc) => {
    const n = desc.shape.reduce((a, b) => a * b, 1);
    let x: Float32Array;
    if (desc.name === "token_embd.weight") x = embd;
    else if (desc.name === "output.weight") x = out;
    else if (desc.shape.length === 1) x = new Float32Array(n).fill(1);
    else if (desc.name.endsWith("ffn_down.weight")) x = new Float32Array(n);
    else {
      x = new Float32Array(n);
      const std = desc.name.endsWith("attn_output.weight") ? spec.mix ?? 0.002 : 0.5;
      new Rng(1000 + i).fillNormal(x, std);
    }
    return new Uint8Array(x.buffer);
  });
  return scripts;
}

/** A scripted model in a new temporary directory (`dispose()` removes it). */
export async function scriptedModel(
  spec: ScriptedModelSpec,
): Promise<{ path: string; scripts: number[][]; dispose(): Promise<void> }> {
  const dir = await Deno.makeTempDir({ prefix: "lethe-scripted-" });
  const path = resolve(dir, `${spec.family}.gguf`);
  const scripts = await writeScriptedModel(path, spec);
  return { path, scripts, dispose: () => Deno.remove(dir, { recursive: true }) };
}
