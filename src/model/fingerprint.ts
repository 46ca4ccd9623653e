/**
 * A stable identity for a model: SHA-256 over its architecture config, its tokenizer's vocabulary and every
 * tensor's name, type, shape and bytes. A stored KV cache resumes only on a model with the same fingerprint.
 */
import { createHash } from "node:crypto";
import type { ModelConfig, ModelWeights, Tensor } from "./types.ts";
import type { Tokenizer } from "./tokenizer/types.ts";

export function modelFingerprint(config: ModelConfig, weights: ModelWeights, tokenizer: Tokenizer): string {
  const h = createHash("sha256");
  h.update("lethe-model-fingerprint-v1\n");
  const keys = Object.keys(config).sort() as (keyof ModelConfig)[];
  h.update(JSON.stringify(keys.map((k) => [k, config[k]])));
  h.update("\nvocab\n");
  for (let i = 0; i < tokenizer.vocabSize; i++) {
    h.update(tokenizer.piece(i));
    h.update("\u0000");
  }
  const tensors = new Map<string, Tensor>();
  const add = (role: string, t: Tensor | undefined) => t && tensors.set(role, t);
  add("tok_embd", weights.tokenEmbd);
  add("out_norm", weights.outputNorm);
  add(weights.output === weights.tokenEmbd ? "output(tied)" : "output", weights.output);
  weights.layers.forEach((l, i) => {
    for (const [k, t] of Object.entries(l)) add(`blk.${i}.${k}`, t as Tensor | undefined);
  });
  for (const role of [...tensors.keys()].sort()) {
    const t = tensors.get(role)!;
    h.update(`\n${role} ${t.type} ${t.shape.join("x")} ${t.data.byteLength}\n`);
    if (!role.endsWith("(tied)")) h.update(t.data);
  }
  return h.digest("hex");
}
