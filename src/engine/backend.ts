/**
 * The compute-backend contract. Every backend (ts reference, native C++, webgpu, cuda) implements it and is
 * checked against the ts reference. The scheduler, the KV policies and the API only ever see this interface.
 */
import type { ModelConfig } from "../model/types.ts";
import type { SequenceKV } from "../kv/cache.ts";

export type BackendName = "ts" | "native" | "webgpu" | "cuda";

/**
 * Element precision of the KV cache a backend keeps. With "f16" every K/V value is rounded to IEEE half
 * precision when it enters the cache (stored as f16 where the backend can, halving KV memory and bandwidth),
 * so a session snapshot stored at f16 is bit-exact relative to the live cache.
 */
export type KVPrecision = "f32" | "f16";

export interface BackendOptions {
  /** Default "f32". */
  kvPrecision?: KVPrecision;
}

/**
 * What attention scores a step should report, per layer, for every cached token (after this step's tokens
 * are appended). For the T new tokens of a step, query t (0-based) contributes with weight
 * `decay^(T-1-t)` if it is among the last `window` queries of the step, else 0; a query's contribution to
 * cached token j is its attention probability on j summed over all query heads of the layer.
 *
 * So a decode step (T = 1) reports `Σ_h A_h(q, j)`; a prefill with decay γ reports exactly what T decode
 * steps of `S = γ·S + A` would have added, and a policy combines it as `S_old·γ^T + scores`.
 */
export interface ScoreRequest {
  decay: number;
  window: number;
}

export interface StepInput {
  kv: SequenceKV;
  /** New tokens; they take positions kv.nextPos, kv.nextPos+1, … and are appended to every layer. */
  tokens: number[];
  /** Which logits to return: of the last token, of every new token, or none. */
  logits: "last" | "all" | "none";
  scores?: ScoreRequest;
}

export interface StepOutput {
  /** `last`: [vocab]; `all`: [tokens.length × vocab] row-major; `none`: empty. */
  logits: Float32Array;
  /** When `scores` was requested: per layer, length = kv.length(layer) after the append. */
  scores?: Float32Array[];
}

export interface Backend {
  readonly name: BackendName;
  readonly config: ModelConfig;
  /** A human-readable description (device, threads, weight types). */
  readonly description: string;
  /** Precision of the KV caches this backend creates. */
  readonly kvPrecision: KVPrecision;
  /** An empty KV cache for a new sequence, owned by this backend. */
  createKV(): SequenceKV;
  /**
   * Run one step for a batch of independent sequences (each with its own cache). Prefill passes many tokens
   * for a sequence in one call; decode passes one. The weights are read once per call for the whole batch.
   * After the call each input's kv has its tokens appended and nextPos advanced.
   */
  forward(batch: StepInput[]): Promise<StepOutput[]>;
  dispose(): void;
}
