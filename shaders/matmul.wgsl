// Batched matmul: Y[n, y_off + o] (+)= sum_k X[n, k] * W[o, k] (+ B[y_off + o]).
// X: [n × cols] activations (row stride x_stride), W: [rows × cols] weights via w_at (see weights_*.wgsl).
// One invocation owns one weight row and a tile of TN tokens, so for n <= TN each weight row is read once
// for the whole batch. `accumulate` fuses the residual add (Y += W·X).
struct Params {
  n: u32,
  cols: u32,
  rows: u32,
  y_stride: u32,
  y_off: u32,
  accumulate: u32,
  has_bias: u32,
  x_stride: u32,
}

@group(0) @binding(1) var<uniform> P: Params;
@group(0) @binding(2) var<storage, read> X: array<f32>;
@group(0) @binding(3) var<storage, read_write> Y: array<f32>;
@group(0) @binding(4) var<storage, read> B: array<f32>;

const TN: u32 = 8u;

@compute @workgroup_size(64)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) li: u32,
) {
  let id = (wid.x + wid.y * nwg.x) * 64u + li;
  let tiles = (P.n + TN - 1u) / TN;
  if (id >= P.rows * tiles) {
    return;
  }
  let o = id % P.rows;
  let n0 = (id / P.rows) * TN;
  let nc = min(TN, P.n - n0);
  var acc: array<f32, 8>;
  for (var i = 0u; i < TN; i++) {
    acc[i] = 0.0;
  }
  for (var k = 0u; k < P.cols; k++) {
    let w = w_at(o, k, P.cols);
    for (var i = 0u; i < nc; i++) {
      acc[i] += w * X[(n0 + i) * P.x_stride + k];
    }
  }
  var bias = 0.0;
  if (P.has_bias != 0u) {
    bias = B[P.y_off + o];
  }
  for (var i = 0u; i < nc; i++) {
    let yi = (n0 + i) * P.y_stride + P.y_off + o;
    var v = acc[i] + bias;
    if (P.accumulate != 0u) {
      v += Y[yi];
    }
    Y[yi] = v;
  }
}
