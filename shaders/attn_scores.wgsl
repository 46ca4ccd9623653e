// Attention logits for tq queries of one sequence against its L cached rows of one layer:
// S[t, h, j] = q_{t,h} · k_{j, h/group} * scale, or -inf-like when Pos[j] > position of query t (causal).
// kv_t (the cache's element type, f32 or f16) is declared by kernels.ts.
struct Params {
  tq: u32,
  n_heads: u32,
  head_dim: u32,
  kv_dim: u32,
  len: u32,
  q_row: u32,
  q_stride: u32,
  group: u32,
  qpos0: u32,
  scale: f32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> QKV: array<f32>;
@group(0) @binding(2) var<storage, read> K: array<kv_t>;
@group(0) @binding(3) var<storage, read> Pos: array<i32>;
@group(0) @binding(4) var<storage, read_write> S: array<f32>;

@compute @workgroup_size(64)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) li: u32,
) {
  let id = (wid.x + wid.y * nwg.x) * 64u + li;
  if (id >= P.tq * P.n_heads * P.len) {
    return;
  }
  let j = id % P.len;
  let th = id / P.len;
  let h = th % P.n_heads;
  let t = th / P.n_heads;
  if (Pos[j] > i32(P.qpos0 + t)) {
    S[id] = -3.0e38;
    return;
  }
  let q = (P.q_row + t) * P.q_stride + h * P.head_dim;
  let k = j * P.kv_dim + (h / P.group) * P.head_dim;
  var acc = 0.0;
  for (var d = 0u; d < P.head_dim; d++) {
    acc += QKV[q + d] * f32(K[k + d]);
  }
  S[id] = acc * P.scale;
}
