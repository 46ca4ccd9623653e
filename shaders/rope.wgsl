// RoPE in place on the q and k heads of the fused qkv rows (heads 0..n_heads-1 are contiguous from column 0).
// CS[t, i] = (cos, sin) of position(t) * theta^(-2i/head_dim), computed on the host in f64.
// half_style = 0: pairs (2i, 2i+1) ("interleaved", llama.cpp NORM); 1: pairs (i, i + d/2) ("half", NEOX).
struct Params {
  n: u32,
  stride: u32,
  n_heads: u32,
  head_dim: u32,
  half_style: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> Y: array<f32>;
@group(0) @binding(2) var<storage, read> CS: array<vec2<f32>>;

@compute @workgroup_size(64)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) li: u32,
) {
  let id = (wid.x + wid.y * nwg.x) * 64u + li;
  let hh = P.head_dim / 2u;
  if (id >= P.n * P.n_heads * hh) {
    return;
  }
  let i = id % hh;
  let th = id / hh;
  let h = th % P.n_heads;
  let t = th / P.n_heads;
  let base = t * P.stride + h * P.head_dim;
  var a = base + 2u * i;
  var b = a + 1u;
  if (P.half_style != 0u) {
    a = base + i;
    b = base + i + hh;
  }
  let cs = CS[t * hh + i];
  let x0 = Y[a];
  let x1 = Y[b];
  Y[a] = x0 * cs.x - x1 * cs.y;
  Y[b] = x0 * cs.y + x1 * cs.x;
}
