// Row softmax in place: S[r, 0..len) for r < rows; one workgroup per row.
struct Params {
  rows: u32,
  len: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> S: array<f32>;

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
  let base = r * P.len;
  var m = -3.4e38;
  for (var j = li; j < P.len; j += 64u) {
    m = max(m, S[base + j]);
  }
  red[li] = m;
  workgroupBarrier();
  for (var w = 32u; w > 0u; w >>= 1u) {
    if (li < w) {
      red[li] = max(red[li], red[li + w]);
    }
    workgroupBarrier();
  }
  let mx = red[0];
  workgroupBarrier();
  var s = 0.0;
  for (var j = li; j < P.len; j += 64u) {
    let e = exp(S[base + j] - mx);
    S[base + j] = e;
    s += e;
  }
  red[li] = s;
  workgroupBarrier();
  for (var w = 32u; w > 0u; w >>= 1u) {
    if (li < w) {
      red[li] += red[li + w];
    }
    workgroupBarrier();
  }
  let inv = 1.0 / red[0];
  for (var j = li; j < P.len; j += 64u) {
    S[base + j] *= inv;
  }
}
