// Embedding lookup: X[t, :] = W[T[t] - row0, :] for tokens whose id is in [row0, row1) (the weight may be
// split into row chunks to respect binding-size limits). Weight accessor from weights_*.wgsl.
struct Params {
  n: u32,
  dim: u32,
  row0: u32,
  row1: u32,
}

@group(0) @binding(1) var<uniform> P: Params;
@group(0) @binding(2) var<storage, read> T: array<u32>;
@group(0) @binding(3) var<storage, read_write> X: array<f32>;

@compute @workgroup_size(64)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) li: u32,
) {
  let id = (wid.x + wid.y * nwg.x) * 64u + li;
  if (id >= P.n * P.dim) {
    return;
  }
  let t = id / P.dim;
  let d = id % P.dim;
  let tok = T[t];
  if (tok < P.row0 || tok >= P.row1) {
    return;
  }
  X[id] = w_at(tok - P.row0, d, P.dim);
}
