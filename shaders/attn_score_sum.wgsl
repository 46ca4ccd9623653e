// KV-policy score output: Out[out_off + j] (+)= sum_t Wt[w_off + t] * sum_h S[t, h, j]
// (Wt = decay^(T-1-t) for the last `window` queries of the step, else 0; computed on the host).
struct Params {
  tq: u32,
  n_heads: u32,
  len: u32,
  w_off: u32,
  out_off: u32,
  accumulate: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> S: array<f32>;
@group(0) @binding(2) var<storage, read> Wt: array<f32>;
@group(0) @binding(3) var<storage, read_write> Out: array<f32>;

@compute @workgroup_size(64)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) li: u32,
) {
  let j = (wid.x + wid.y * nwg.x) * 64u + li;
  if (j >= P.len) {
    return;
  }
  var acc = 0.0;
  for (var t = 0u; t < P.tq; t++) {
    let w = Wt[P.w_off + t];
    if (w == 0.0) {
      continue;
    }
    var s = 0.0;
    for (var h = 0u; h < P.n_heads; h++) {
      s += S[(t * P.n_heads + h) * P.len + j];
    }
    acc += w * s;
  }
  if (P.accumulate != 0u) {
    acc += Out[P.out_off + j];
  }
  Out[P.out_off + j] = acc;
}
