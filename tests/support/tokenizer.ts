/** Tokenizer test helpers: llama.cpp's vocabulary fixtures and the streaming-decode agreement check. */
import assert from "node:assert/strict";
import { resolve } from "node:path";
import { REPO_ROOT } from "../../src/model/loader.ts";
import { plainMetadata, readGGUFFile } from "../../src/model/gguf.ts";
import type { Tokenizer } from "../../src/model/tokenizer/types.ts";

export const SHARED = resolve(REPO_ROOT, "..", "shared");
export const VOCAB_DIR = Deno.env.get("LETHE_VOCAB_DIR") ?? resolve(SHARED, "fixtures", "vocab");
export const DEV_TEXT = resolve(SHARED, "data", "tinystories_val_dev.txt");

/** Every vocabulary in the fixtures, and those that come with llama.cpp's test pairs. */
export const VOCABS = [
  "gpt-2",
  "starcoder",
  "deepseek-coder",
  "deepseek-llm",
  "falcon",
  "refact",
  "mpt",
  "gpt-neox",
  "phi-3",
  "llama-spm",
  "baichuan",
] as const;
export const WITH_PAIRS = [
  "gpt-2",
  "starcoder",
  "deepseek-coder",
  "deepseek-llm",
  "phi-3",
  "llama-spm",
] as const;

export function vocabPath(name: string): string {
  return resolve(VOCAB_DIR, `ggml-vocab-${name}.gguf`);
}

/** The GGUF metadata of `ggml-vocab-<name>.gguf`. */
export async function vocabMetadata(name: string): Promise<Record<string, unknown>> {
  return plainMetadata(await readGGUFFile(vocabPath(name)));
}

/** llama.cpp's test pairs: `.inp` cases (each followed by the separator line) and `.out` id lines. */
export async function vocabPairs(name: string): Promise<{ text: string; ids: number[] }[]> {
  const inp = (await Deno.readTextFile(`${vocabPath(name)}.inp`)).split("\n__ggml_vocab_test__\n");
  assert.equal(inp.pop(), "", "the .inp file ends with a separator");
  const out = (await Deno.readTextFile(`${vocabPath(name)}.out`)).split("\n");
  assert.equal(out.pop(), "", "the .out file ends with a newline");
  assert.equal(inp.length, out.length, `${name}: ${inp.length} cases but ${out.length} id lines`);
  return inp.map((text, i) => {
    const line = out[i].trim();
    return { text, ids: line === "" ? [] : line.split(" ").map(Number) };
  });
}

/** Streams `ids` through a fresh decoder. */
export function streamed(t: Tokenizer, ids: number[]): string {
  const d = t.streamDecoder();
  let s = "";
  for (const id of ids) s += d.push(id);
  return s + d.flush();
}

/** Streaming agrees with whole decoding at every split point (emitted text is always a prefix). */
export function checkStreaming(t: Tokenizer, ids: number[]): void {
  const whole = t.decode(ids);
  assert.equal(streamed(t, ids), whole);
  for (let k = 0; k <= ids.length; k++) {
    // Whatever was emitted after k tokens is a prefix of the whole text, and flushing there equals decode.
    const d = t.streamDecoder();
    let s = "";
    for (const id of ids.slice(0, k)) s += d.push(id);
    assert.ok(whole.startsWith(s), `split ${k}: ${JSON.stringify(s)} not a prefix`);
    assert.equal(s + d.flush(), t.decode(ids.slice(0, k)), `prefix ${k}`);
    // Continuing the same decoder after the split gives the whole text.
    const d2 = t.streamDecoder();
    let s2 = "";
    for (const id of ids.slice(0, k)) s2 += d2.push(id);
    for (const id of ids.slice(k)) s2 += d2.push(id);
    assert.equal(s2 + d2.flush(), whole, `split ${k}`);
  }
}
