/**
 * Load a model from a path: a GGUF file or a Hugging Face directory (config.json + safetensors +
 * tokenizer.json). The result carries everything the engine and server need, including the fingerprint.
 */
import { plainMetadata, readGGUFFile } from "./gguf.ts";
import { modelFromGGUF } from "./gguf_model.ts";
import { loadHFModel, loadHFTokenizer } from "./hf.ts";
import { tokenizerFromGGUFMetadata } from "./tokenizer/from_gguf.ts";
import { modelFingerprint } from "./fingerprint.ts";
import { ModelFormatError } from "./errors.ts";
import type { ModelConfig, ModelWeights } from "./types.ts";
import type { Tokenizer } from "./tokenizer/types.ts";
import { basename, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export interface LoadedModel {
  /** Short display name (file or directory name). */
  name: string;
  path: string;
  format: "gguf" | "hf";
  config: ModelConfig;
  weights: ModelWeights;
  tokenizer: Tokenizer;
  fingerprint: string;
  chatTemplate?: string;
  metadata: Record<string, unknown>;
}

export interface LoadOptions {
  /** Override the context length the file declares (e.g. a model trained on less than it claims). */
  contextLength?: number;
}

/** The repository root (this file is src/model/loader.ts). */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");

/** Default locations of the shared models, relative to the repository root. */
export const SHARED_MODELS = {
  stories260K: resolve(REPO_ROOT, "..", "shared", "models", "stories260K.gguf"),
  tinystories656K: resolve(REPO_ROOT, "..", "shared", "models", "tinystories-656K"),
};

/**
 * Only the tokenizer of a model: a GGUF file (a vocabulary-only GGUF is enough) or a Hugging Face directory
 * (tokenizer.json). `warn` receives tokenizer warnings (a GGUF without tokenizer.ggml.pre).
 */
export async function loadTokenizer(path: string, warn?: (msg: string) => void): Promise<Tokenizer> {
  const stat = await statModel(path);
  if (stat.isDirectory) return loadHFTokenizer(path);
  return ggufTokenizer(path, plainMetadata(await readGGUFFile(path)), warn);
}

async function statModel(path: string): Promise<Deno.FileInfo> {
  try {
    return await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new ModelFormatError(`model not found: ${path}`);
    throw e;
  }
}

/** The GGUF's tokenizer family (tokenizer.ggml.model); a bad vocabulary is a model-format error. */
function ggufTokenizer(
  path: string,
  metadata: Record<string, unknown>,
  warn?: (msg: string) => void,
): Tokenizer {
  try {
    return tokenizerFromGGUFMetadata(metadata, warn);
  } catch (e) {
    throw new ModelFormatError(`${path}: ${(e as Error).message}`);
  }
}

export async function loadModel(path: string, opts: LoadOptions = {}): Promise<LoadedModel> {
  const stat = await statModel(path);
  let loaded: Omit<LoadedModel, "fingerprint" | "name" | "path">;
  if (stat.isDirectory) {
    const hf = await loadHFModel(path);
    loaded = { format: "hf", ...hf };
  } else {
    const file = await readGGUFFile(path);
    const { config, weights, metadata } = modelFromGGUF(file);
    const tokenizer = ggufTokenizer(path, metadata);
    const tmpl = metadata["tokenizer.chat_template"];
    loaded = {
      format: "gguf",
      config,
      weights,
      tokenizer,
      metadata,
      chatTemplate: typeof tmpl === "string" ? tmpl : undefined,
    };
  }
  if (opts.contextLength !== undefined) {
    if (!Number.isInteger(opts.contextLength) || opts.contextLength < 1) {
      throw new RangeError(`context length must be a positive integer, got ${opts.contextLength}`);
    }
    loaded.config = { ...loaded.config, contextLength: opts.contextLength };
  }
  if (loaded.tokenizer.vocabSize > loaded.config.vocabSize) {
    throw new ModelFormatError(
      `tokenizer has ${loaded.tokenizer.vocabSize} tokens but the model's vocabulary is ${loaded.config.vocabSize}`,
    );
  }
  return {
    ...loaded,
    name: basename(path.replace(/\/+$/, "")),
    path: resolve(path),
    fingerprint: modelFingerprint(loaded.config, loaded.weights, loaded.tokenizer),
  };
}
