/** Picks the tokenizer family a GGUF vocabulary needs (`tokenizer.ggml.model`). */
import { bpeFromGGUFMetadata } from "./bpe.ts";
import { spmFromGGUFMetadata } from "./spm.ts";
import type { VocabTokenizer } from "./vocab.ts";

/** SentencePiece for "llama" (or no model key, as llama2.c exports), byte-level BPE for "gpt2". */
export function tokenizerFromGGUFMetadata(
  meta: Record<string, unknown>,
  warn?: (msg: string) => void,
): VocabTokenizer {
  const model = meta["tokenizer.ggml.model"];
  if (model === undefined || model === "llama") return spmFromGGUFMetadata(meta);
  if (model === "gpt2") return bpeFromGGUFMetadata(meta, warn);
  throw new Error(
    `unsupported GGUF tokenizer model ${
      JSON.stringify(model)
    } (tokenizer.ggml.model; supported: llama, gpt2)`,
  );
}
