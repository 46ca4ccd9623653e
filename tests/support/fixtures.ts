/**
 * The reference fixtures in ../shared/fixtures (env LETHE_FIXTURES_DIR overrides the folder): paths and
 * readers for the kquant/ group (llama-quantize's files with ggml's dequantized reference values).
 */
import { resolve } from "node:path";
import { REPO_ROOT } from "../../src/model/loader.ts";

export const FIXTURES_DIR = Deno.env.get("LETHE_FIXTURES_DIR") ??
  resolve(REPO_ROOT, "..", "shared", "fixtures");
export const KQUANT_DIR = resolve(FIXTURES_DIR, "kquant");
/** The F32 model every kquant file was quantized from. */
export const KQUANT_F32 = resolve(KQUANT_DIR, "kq-llama-f32.gguf");

/** The quantized kquant fixture files (names), sorted: kq-llama-<TYPE>.gguf and kq-llama-d320-Q4_K_M.gguf. */
export function kquantFiles(): string[] {
  return [...Deno.readDirSync(KQUANT_DIR)]
    .map((e) => e.name)
    .filter((n) => /^kq-llama-.*\.gguf$/.test(n) && n !== "kq-llama-f32.gguf")
    .sort();
}

export interface DequantRefTensor {
  type: string;
  /** GGUF order: innermost first. */
  shape_gguf: number[];
  elements: number;
  sha256_f32le: string;
  sum: number;
  sum_sq: number;
  indices: number[];
  values: number[];
}

/** `<file>.dequant.json`: ggml's dequantized values of every tensor, summarized. */
export function readDequantRef(file: string): { tensors: Record<string, DequantRefTensor> } {
  return JSON.parse(Deno.readTextFileSync(resolve(KQUANT_DIR, `${file}.dequant.json`)));
}

export interface GoldenCase {
  prompt: string;
  prompt_tokens: number[];
  tokens: number[];
  tokens_kv_f32: number[];
  /** Per generated token: [[id, logprob], [id, logprob]] of the two largest logits (KV f16 run). */
  top2_logprobs: [number, number][][];
}

/** `<file>.golden.json`: llama.cpp's greedy ids. */
export function readGolden(file: string): { cases: GoldenCase[] } {
  return JSON.parse(Deno.readTextFileSync(resolve(KQUANT_DIR, `${file}.golden.json`)));
}

/** The fixtures' 48 sample indices of n elements: 0..15, ⌊i·(n−1)/17⌋ for i = 1..16, the last 16. */
export function sampleIndices(n: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < 16; i++) out.push(i);
  for (let i = 1; i <= 16; i++) out.push(Math.floor((i * (n - 1)) / 17));
  for (let i = n - 16; i < n; i++) out.push(i);
  return out;
}
