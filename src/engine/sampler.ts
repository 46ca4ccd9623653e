/**
 * Token sampling: greedy, temperature, top-k, top-p, min-p and repetition penalty, with a seeded,
 * serializable PRNG so a seeded request (or a resumed session) is reproducible.
 */

export interface SamplingParams {
  /** 0 = greedy (argmax). */
  temperature: number;
  /** 0 = off. */
  topK: number;
  /** 1 = off. */
  topP: number;
  /** 0 = off: drop tokens whose probability is below minP × the top probability. */
  minP: number;
  /** 1 = off (llama.cpp rule: positive logits divided, negative multiplied). */
  repetitionPenalty: number;
  /** How many of the most recent tokens the penalty looks at. */
  repetitionWindow: number;
  /** Seed of the PRNG; without one a random seed is drawn. */
  seed?: number;
}

export const GREEDY: SamplingParams = {
  temperature: 0,
  topK: 0,
  topP: 1,
  minP: 0,
  repetitionPenalty: 1,
  repetitionWindow: 64,
};

export function validateSampling(p: SamplingParams): void {
  const bad = (name: string, why: string) => {
    throw new RangeError(`${name} ${why}`);
  };
  if (!(p.temperature >= 0) || !Number.isFinite(p.temperature)) {
    bad("temperature", "must be a finite number ≥ 0");
  }
  if (!Number.isInteger(p.topK) || p.topK < 0) bad("top_k", "must be an integer ≥ 0");
  if (!(p.topP > 0 && p.topP <= 1)) bad("top_p", "must be in (0, 1]");
  if (!(p.minP >= 0 && p.minP <= 1)) bad("min_p", "must be in [0, 1]");
  if (!(p.repetitionPenalty > 0) || !Number.isFinite(p.repetitionPenalty)) {
    bad("repetition_penalty", "must be a finite number > 0");
  }
  if (!Number.isInteger(p.repetitionWindow) || p.repetitionWindow < 0) {
    bad("repetition_window", "must be an integer ≥ 0");
  }
  if (p.seed !== undefined && (!Number.isInteger(p.seed) || p.seed < 0 || p.seed > 0xffffffff)) {
    bad("seed", "must be an integer in [0, 2^32)");
  }
}

/** xoshiro128** — small, fast, good quality; its state is four uint32s. */
class Rng {
  s: Uint32Array;
  constructor(seed: number) {
    // splitmix32 to spread the seed over the state
    this.s = new Uint32Array(4);
    let z = seed >>> 0;
    for (let i = 0; i < 4; i++) {
      z = (z + 0x9e3779b9) >>> 0;
      let t = z;
      t = Math.imul(t ^ (t >>> 16), 0x85ebca6b) >>> 0;
      t = Math.imul(t ^ (t >>> 13), 0xc2b2ae35) >>> 0;
      this.s[i] = (t ^ (t >>> 16)) >>> 0;
    }
  }
  /** Uniform in [0, 1). */
  next(): number {
    const s = this.s;
    const r = Math.imul(rotl(Math.imul(s[1], 5) >>> 0, 7), 9) >>> 0;
    const t = (s[1] << 9) >>> 0;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return r / 4294967296;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

export function argmax(x: ArrayLike<number>): number {
  let best = 0;
  let bv = -Infinity;
  for (let i = 0; i < x.length; i++) {
    if (x[i] > bv) {
      bv = x[i];
      best = i;
    }
  }
  return best;
}

export class Sampler {
  readonly params: SamplingParams;
  private rng: Rng;

  constructor(params: SamplingParams) {
    validateSampling(params);
    this.params = { ...params };
    const seed = params.seed ?? (crypto.getRandomValues(new Uint32Array(1))[0]);
    this.params.seed = seed;
    this.rng = new Rng(seed);
  }

  /** Pick the next token from raw logits; `history` feeds the repetition penalty. Does not modify logits. */
  sample(logits: Float32Array, history: ArrayLike<number> = []): number {
    const p = this.params;
    let l: Float32Array = logits;
    if (p.repetitionPenalty !== 1 && p.repetitionWindow > 0 && history.length > 0) {
      l = Float32Array.from(logits);
      const seen = new Set<number>();
      for (let i = Math.max(0, history.length - p.repetitionWindow); i < history.length; i++) {
        seen.add(history[i]);
      }
      for (const t of seen) {
        if (t >= 0 && t < l.length) l[t] = l[t] > 0 ? l[t] / p.repetitionPenalty : l[t] * p.repetitionPenalty;
      }
    }
    if (p.temperature === 0) return argmax(l);

    // candidates sorted by logit (descending), truncated by top-k
    const n = l.length;
    let idx = Array.from({ length: n }, (_, i) => i).sort((a, b) => l[b] - l[a] || a - b);
    if (p.topK > 0 && p.topK < n) idx = idx.slice(0, p.topK);
    const max = l[idx[0]];
    const probs = idx.map((i) => Math.exp((l[i] - max) / p.temperature));
    let sum = probs.reduce((a, b) => a + b, 0);
    let keep = probs.length;
    if (p.minP > 0) {
      const floor = p.minP * (probs[0] / sum);
      let k = 0;
      while (k < keep && probs[k] / sum >= floor) k++;
      keep = Math.max(1, k);
    }
    if (p.topP < 1) {
      let cum = 0;
      let k = 0;
      while (k < keep) {
        cum += probs[k] / sum;
        k++;
        if (cum >= p.topP) break;
      }
      keep = Math.max(1, k);
    }
    sum = 0;
    for (let i = 0; i < keep; i++) sum += probs[i];
    let r = this.rng.next() * sum;
    for (let i = 0; i < keep; i++) {
      r -= probs[i];
      if (r < 0) return idx[i];
    }
    return idx[keep - 1];
  }

  getState(): Record<string, unknown> {
    return { params: this.params, rng: Array.from(this.rng.s) };
  }

  setState(s: Record<string, unknown>): void {
    const rng = s.rng;
    if (
      !Array.isArray(rng) || rng.length !== 4 ||
      !rng.every((x) => Number.isInteger(x) && x >= 0 && x < 2 ** 32)
    ) {
      throw new Error("sampler state: rng must be four uint32 values");
    }
    this.rng.s.set(rng as number[]);
  }
}
