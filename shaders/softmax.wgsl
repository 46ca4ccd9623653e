// Row softmax in place: S[r, 0..len) for r < rows; one invocation per row (no workgroup barriers: they are
// costly on CPU drivers such as lavapipe).
struct Params {
  rows: u32,
  len: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> S: array<f32>;

@compute @workgroup_size(64)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) li: u32,
) {
  let r = (wid.x + wid.y * nwg.x) * 64u + li;
  if (r >= P.rows) {
    return;
  }
  let base = r * P.len;
  var m = -3.4e38;
  for (var j = 0u; j < P.len; j++) {
    m = max(m, S[base + j]);
  }
  var s = 0.0;
  for (var j = 0u; j < P.len; j++) {
    let e = exp(S[base + j] - m);
    S[base + j] = e;
    s += e;
  }
  let inv = 1.0 / s;
  for (var j = 0u; j < P.len; j++) {
    S[base + j] *= inv;
  }
}
