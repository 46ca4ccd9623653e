/** Rotary position embedding, both pairing conventions (see RopeStyle in src/model/types.ts). */
import type { RopeStyle } from "../../model/types.ts";

/** freq[i] = theta^(-2i/headDim) for i < headDim/2. */
export function ropeFrequencies(headDim: number, theta: number): Float64Array {
  const f = new Float64Array(headDim / 2);
  for (let i = 0; i < headDim / 2; i++) f[i] = Math.pow(theta, -(2 * i) / headDim);
  return f;
}

/** Rotate every head of `x` ([nHeads × headDim]) in place for position `pos`. */
export function applyRope(
  x: Float32Array,
  nHeads: number,
  headDim: number,
  pos: number,
  freqs: Float64Array,
  style: RopeStyle,
): void {
  const half = headDim / 2;
  for (let h = 0; h < nHeads; h++) {
    const o = h * headDim;
    for (let i = 0; i < half; i++) {
      const a = pos * freqs[i];
      const cos = Math.cos(a), sin = Math.sin(a);
      const i0 = style === "interleaved" ? o + 2 * i : o + i;
      const i1 = style === "interleaved" ? i0 + 1 : i0 + half;
      const x0 = x[i0], x1 = x[i1];
      x[i0] = x0 * cos - x1 * sin;
      x[i1] = x0 * sin + x1 * cos;
    }
  }
}
