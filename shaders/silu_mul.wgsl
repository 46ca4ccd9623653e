// SwiGLU: O[r, c] = silu(H[r, c]) * H[r, ffn + c] for the fused [gate | up] rows H[n × 2ffn].
struct Params {
  n: u32,
  ffn: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> H: array<f32>;
@group(0) @binding(2) var<storage, read_write> O: array<f32>;

@compute @workgroup_size(64)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) li: u32,
) {
  let id = (wid.x + wid.y * nwg.x) * 64u + li;
  if (id >= P.n * P.ffn) {
    return;
  }
  let r = id / P.ffn;
  let c = id % P.ffn;
  let g = H[r * 2u * P.ffn + c];
  let u = H[r * 2u * P.ffn + P.ffn + c];
  O[id] = g / (1.0 + exp(-g)) * u;
}
