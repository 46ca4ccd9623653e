// KV append: copy the k and v parts of T fused qkv rows (already roped) into one layer's cache at rows
// dst_row.., and record their original positions pos0, pos0+1, ...
struct Params {
  t: u32,
  kv_dim: u32,
  stride: u32,
  k_off: u32,
  row_in: u32,
  dst_row: u32,
  pos0: u32,
  _pad: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> QKV: array<f32>;
@group(0) @binding(2) var<storage, read_write> K: array<f32>;
@group(0) @binding(3) var<storage, read_write> V: array<f32>;
@group(0) @binding(4) var<storage, read_write> Pos: array<i32>;

@compute @workgroup_size(64)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) li: u32,
) {
  let id = (wid.x + wid.y * nwg.x) * 64u + li;
  if (id >= P.t * P.kv_dim) {
    return;
  }
  let t = id / P.kv_dim;
  let c = id % P.kv_dim;
  let src = (P.row_in + t) * P.stride + P.k_off + c;
  let dst = (P.dst_row + t) * P.kv_dim + c;
  K[dst] = QKV[src];
  V[dst] = QKV[src + P.kv_dim];
  if (c == 0u) {
    Pos[P.dst_row + t] = i32(P.pos0 + t);
  }
}
