// RMSNorm: Y[r, :] = X[src, :] / sqrt(mean(X[src, :]^2) + eps) * Wn, src = Map[r] if use_map else r.
// One invocation per output row (no workgroup barriers: they are costly on CPU drivers such as lavapipe).
struct Params {
  rows: u32,
  dim: u32,
  eps: f32,
  use_map: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read> Wn: array<f32>;
@group(0) @binding(3) var<storage, read_write> Y: array<f32>;
@group(0) @binding(4) var<storage, read> Map: array<u32>;

@compute @workgroup_size(64)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) li: u32,
) {
  let r = (wid.x + wid.y * nwg.x) * 64u + li;
  if (r >= P.rows) {
    return;
  }
  var src = r;
  if (P.use_map != 0u) {
    src = Map[r];
  }
  let xb = src * P.dim;
  var s = 0.0;
  for (var d = 0u; d < P.dim; d++) {
    let v = X[xb + d];
    s += v * v;
  }
  let scale = 1.0 / sqrt(s / f32(P.dim) + P.eps);
  for (var d = 0u; d < P.dim; d++) {
    Y[r * P.dim + d] = X[xb + d] * scale * Wn[d];
  }
}
