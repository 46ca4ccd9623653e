/** Numeric comparison helpers shared by the backend agreement tests. */
import assert from "node:assert/strict";

export function maxAbs(a: Float32Array): number {
  let m = 0;
  for (const x of a) m = Math.max(m, Math.abs(x));
  return m;
}

/** Every element within `tol` (absolute); the message names the worst element. NaN never passes. */
export function assertClose(got: Float32Array, want: Float32Array, tol: number, what: string): void {
  assert.equal(got.length, want.length, `${what}: length`);
  let worst = 0, at = -1;
  for (let i = 0; i < got.length; i++) {
    const d = Math.abs(got[i] - want[i]);
    if (!(d <= worst)) {
      worst = d;
      at = i;
    }
  }
  assert.ok(
    worst <= tol,
    `${what}: max abs diff ${worst} at ${at} (got ${got[at]}, want ${want[at]}) > ${tol}`,
  );
}
