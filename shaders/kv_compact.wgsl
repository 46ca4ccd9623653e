// In-place compaction of one layer of a KV cache: for i = first .. n_keep-1 in ascending order, row i becomes
// row Keep[keep_off + i] (K, V and the position). Keep is strictly ascending, so Keep[i] >= i: a row is read
// before any write can reach it. Each invocation owns one 32-bit word column of every row (row_words per row:
// kv_dim for f32 storage, kv_dim / 2 for f16), so invocations never touch each other's words and no barrier
// is needed; invocation 0 also moves the positions. Rows move as raw words: every KV element type.
struct Params {
  n_keep: u32,
  row_words: u32,
  first: u32,
  keep_off: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> Keep: array<u32>;
@group(0) @binding(2) var<storage, read_write> K: array<u32>;
@group(0) @binding(3) var<storage, read_write> V: array<u32>;
@group(0) @binding(4) var<storage, read_write> Pos: array<i32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let c = gid.x;
  if (c >= P.row_words) {
    return;
  }
  let w = P.row_words;
  for (var i = P.first; i < P.n_keep; i++) {
    let src = Keep[P.keep_off + i];
    K[i * w + c] = K[src * w + c];
    V[i * w + c] = V[src * w + c];
    if (c == 0u) {
      Pos[i] = Pos[src];
    }
  }
}
