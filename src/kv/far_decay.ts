/**
 * Per-layer score decay from how far back a layer's attention reaches (Lethe's `farPower`, `farAge`): per
 * layer an EMA (rate 0.99 per decode step) of the share m_l of the current query's attention (sinks excluded)
 * on rows older than `farAge` tokens, and the layer's table decay `γ_l = 1 − (1 − γ)·(1 − m_l)^power`. Local
 * layers keep γ; a layer reaching far back gets γ_l → 1 (H2O-like long memory). Power 0 is a single γ.
 */
import type { SequenceKV } from "./cache.ts";

/** Running share of attention on far rows: EMA rate per decode step. */
const FAR_EMA = 0.99;

/** The layer's decay from its far-attention share m: `1 − (1 − γ)·(1 − m)^power` (power 0: γ itself). */
export function farGamma(gamma: number, farShare: number, power: number): number {
  const m = Math.min(1, Math.max(0, farShare));
  return 1 - (1 - gamma) * Math.pow(1 - m, power);
}

export class FarDecay {
  /** Per layer: EMA of the current query's attention share on far rows, and the EMA's weight. */
  readonly sum: number[];
  readonly weight: number[];
  /** Per-layer decay in use (`farGamma` of the layer's far share). */
  readonly gammas: number[];

  constructor(
    nLayers: number,
    readonly p: { gamma: number; farPower: number; farAge: number; sink: number },
  ) {
    this.sum = new Array(nLayers).fill(0);
    this.weight = new Array(nLayers).fill(0);
    this.gammas = new Array(nLayers).fill(p.gamma);
  }

  /** The layer's running share of attention on far rows (0 before any measurement). */
  share(layer: number): number {
    return this.weight[layer] > 0 ? this.sum[layer] / this.weight[layer] : 0;
  }

  /**
   * After a decode step: update each layer's far share from the current query's attention `scores` (one per
   * cached row of kv; sinks excluded, rows older than `farAge` are far), then the layer's decay.
   */
  track(kv: SequenceKV, scores: Float32Array[]): void {
    const { sink, farAge, farPower, gamma } = this.p;
    const now = kv.nextPos - 1;
    if (now <= farAge) return;
    for (let l = 0; l < this.gammas.length; l++) {
      const pos = kv.positions(l);
      const a = scores[l];
      let tot = 0, far = 0;
      for (let j = Math.min(sink, pos.length); j < pos.length; j++) {
        tot += a[j];
        if (now - pos[j] > farAge) far += a[j];
      }
      if (tot > 0) {
        this.sum[l] = FAR_EMA * this.sum[l] + (1 - FAR_EMA) * (far / tot);
        this.weight[l] = FAR_EMA * this.weight[l] + (1 - FAR_EMA);
      }
      this.gammas[l] = farGamma(gamma, this.share(l), farPower);
    }
  }

  export(): { sum: number[]; weight: number[]; gammas: number[] } {
    return { sum: [...this.sum], weight: [...this.weight], gammas: [...this.gammas] };
  }

  /** Restores `export()`'s output; throws unless it holds a number in [0, 1] per layer in each list. */
  import(f: unknown): void {
    const L = this.gammas.length;
    const nums = (a: unknown): a is number[] =>
      Array.isArray(a) && a.length === L &&
      a.every((x) => typeof x === "number" && Number.isFinite(x) && x >= 0 && x <= 1);
    const o = f as Record<string, unknown> | undefined;
    if (!o || typeof o !== "object" || !nums(o.sum) || !nums(o.weight) || !nums(o.gammas)) {
      throw new Error(`policy state: lethe needs meta.far {sum, weight, gammas} (${L} numbers in [0, 1])`);
    }
    for (let l = 0; l < L; l++) {
      this.sum[l] = o.sum[l];
      this.weight[l] = o.weight[l];
      this.gammas[l] = o.gammas[l];
    }
  }
}
