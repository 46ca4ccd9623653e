/**
 * The compute-backend contract. Every backend (ts reference, native C++, webgpu, cuda) implements it and is
 * checked against the ts reference. The scheduler, the KV policies and the API only ever see this interface.
 */
import type { ModelConfig } from "../model/types.ts";
import type { SequenceKV } from "../kv/cache.ts";
import { checkPlan, type PrunePlan } from "../kv/kv_index.ts";

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
  /**
   * Native CPU backend: multiply-adds below which a matmul or attention runs on one thread, for this model
   * (default: the library's). Other backends ignore it.
   */
  parallelWork?: number;
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
  /**
   * The prune plan the sequence's policy made after its previous step (kv_index.ts): per layer, the rows to
   * keep (indices into the layer as `kv` holds it when forward is called, strictly ascending) or null. The
   * backend applies it before it appends this step's tokens, all layers of all sequences of the batch
   * together (one GPU submit / kernel launch for the whole step), so `scores` and the lengths after the call
   * refer to the kept rows followed by the new ones. Every plan is checked before anything runs: an invalid
   * one rejects the call with no cache changed.
   */
  compact?: PrunePlan;
  /** New tokens; they take positions kv.nextPos, kv.nextPos+1, … and are appended to every layer. */
  tokens: number[];
  /** Which logits to return: of the last token, of every new token, or none. */
  logits: "last" | "all" | "none";
  scores?: ScoreRequest;
}

export interface StepOutput {
  /** `last`: [vocab]; `all`: [tokens.length × vocab] row-major; `none`: empty. */
  logits: Float32Array;
  /** When `scores` was requested: per layer, length = kv.length(layer) after the plan and the append. */
  scores?: Float32Array[];
}

/**
 * The checks every backend makes on a batch before it runs anything, so that a bad batch is refused with the
 * same message everywhere and changes no cache. `owns` says whether a cache was created by this backend (and is
 * still usable: it throws for a freed cache).
 */
export function checkBatch(
  batch: StepInput[],
  backend: { readonly name: BackendName; readonly config: ModelConfig },
  owns: (kv: SequenceKV) => boolean,
): void {
  const V = backend.config.vocabSize;
  const seen = new Map<SequenceKV, number>();
  batch.forEach((b, s) => {
    if (!owns(b.kv)) {
      throw new Error(
        `forward: sequence ${s} has a cache that does not belong to this ${backend.name} backend`,
      );
    }
    const other = seen.get(b.kv);
    if (other !== undefined) throw new Error(`forward: sequences ${other} and ${s} share a cache`);
    seen.set(b.kv, s);
    if (!Array.isArray(b.tokens) || b.tokens.length === 0) {
      throw new Error(`forward: sequence ${s} has no tokens`);
    }
    for (const t of b.tokens) {
      if (!Number.isInteger(t) || t < 0 || t >= V) {
        throw new RangeError(`forward: sequence ${s}: token id ${t} out of range [0, ${V})`);
      }
    }
    if (b.logits !== "last" && b.logits !== "all" && b.logits !== "none") {
      throw new Error(`forward: sequence ${s}: logits must be "last", "all" or "none"`);
    }
    if (b.scores) {
      const { decay, window } = b.scores;
      if (!(decay >= 0) || !Number.isFinite(decay) || !(window >= 0)) {
        throw new RangeError(`forward: sequence ${s}: scores need a finite decay >= 0 and a window >= 0`);
      }
    }
    if (b.compact) checkPlan(b.compact, b.kv.shape.nLayers, (l) => b.kv.length(l));
  });
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
   * After the call each input's kv has its plan (`compact`) applied, its tokens appended and nextPos
   * advanced; a rejected call changes no cache.
   */
  forward(batch: StepInput[]): Promise<StepOutput[]>;
  dispose(): void;
}
