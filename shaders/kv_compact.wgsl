// KV compaction: gather the kept rows (Keep, strictly ascending) of one layer into fresh buffers. Rows are
// copied as raw 32-bit words (row_words per row: kv_dim for f32 storage, kv_dim / 2 for f16), so this kernel
// serves every KV element type.
struct Params {
  n_keep: u32,
  row_words: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> Keep: array<u32>;
@group(0) @binding(2) var<storage, read> Ks: array<u32>;
@group(0) @binding(3) var<storage, read> Vs: array<u32>;
@group(0) @binding(4) var<storage, read> Ps: array<i32>;
@group(0) @binding(5) var<storage, read_write> Kd: array<u32>;
@group(0) @binding(6) var<storage, read_write> Vd: array<u32>;
@group(0) @binding(7) var<storage, read_write> Pd: array<i32>;

@compute @workgroup_size(64)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) li: u32,
) {
  let id = (wid.x + wid.y * nwg.x) * 64u + li;
  if (id >= P.n_keep * P.row_words) {
    return;
  }
  let i = id / P.row_words;
  let c = id % P.row_words;
  let src = Keep[i];
  Kd[id] = Ks[src * P.row_words + c];
  Vd[id] = Vs[src * P.row_words + c];
  if (c == 0u) {
    Pd[i] = Ps[src];
  }
}
