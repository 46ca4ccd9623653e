// RMSNorm: Y[r, :] = X[src, :] / sqrt(mean(X[src, :]^2) + eps) * Wn, src = Map[r] if use_map else r.
// One workgroup per output row.
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

var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) li: u32,
) {
  let r = wid.x + wid.y * nwg.x;
  if (r >= P.rows) {
    return;
  }
  var src = r;
  if (P.use_map != 0u) {
    src = Map[r];
  }
  var s = 0.0;
  for (var d = li; d < P.dim; d += 64u) {
    let v = X[src * P.dim + d];
    s += v * v;
  }
  red[li] = s;
  workgroupBarrier();
  for (var w = 32u; w > 0u; w >>= 1u) {
    if (li < w) {
      red[li] += red[li + w];
    }
    workgroupBarrier();
  }
  let scale = 1.0 / sqrt(red[0] / f32(P.dim) + P.eps);
  for (var d = li; d < P.dim; d += 64u) {
    Y[r * P.dim + d] = X[src * P.dim + d] * scale * Wn[d];
  }
}
