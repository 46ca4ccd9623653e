// Attention output: O[out_row + t, h*head_dim + d] = sum_j S[t, h, j] * V[j, (h/group)*head_dim + d].
// kv_t (the cache's element type, f32 or f16) is declared by kernels.ts.
struct Params {
  tq: u32,
  n_heads: u32,
  head_dim: u32,
  kv_dim: u32,
  len: u32,
  out_row: u32,
  group: u32,
  _pad: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> S: array<f32>;
@group(0) @binding(2) var<storage, read> V: array<kv_t>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;

@compute @workgroup_size(64)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) li: u32,
) {
  let id = (wid.x + wid.y * nwg.x) * 64u + li;
  if (id >= P.tq * P.n_heads * P.head_dim) {
    return;
  }
  let d = id % P.head_dim;
  let th = id / P.head_dim;
  let h = th % P.n_heads;
  let t = th / P.n_heads;
  let sb = th * P.len;
  let vb = (h / P.group) * P.head_dim + d;
  var acc = 0.0;
  for (var j = 0u; j < P.len; j++) {
    acc += S[sb + j] * f32(V[j * P.kv_dim + vb]);
  }
  O[(P.out_row + t) * P.n_heads * P.head_dim + h * P.head_dim + d] = acc;
}
