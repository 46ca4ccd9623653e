// KV compaction: gather the kept rows (Keep, strictly ascending) of one layer into fresh buffers.
struct Params {
  n_keep: u32,
  kv_dim: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> Keep: array<u32>;
@group(0) @binding(2) var<storage, read> Ks: array<f32>;
@group(0) @binding(3) var<storage, read> Vs: array<f32>;
@group(0) @binding(4) var<storage, read> Ps: array<i32>;
@group(0) @binding(5) var<storage, read_write> Kd: array<f32>;
@group(0) @binding(6) var<storage, read_write> Vd: array<f32>;
@group(0) @binding(7) var<storage, read_write> Pd: array<i32>;

@compute @workgroup_size(64)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) li: u32,
) {
  let id = (wid.x + wid.y * nwg.x) * 64u + li;
  if (id >= P.n_keep * P.kv_dim) {
    return;
  }
  let i = id / P.kv_dim;
  let c = id % P.kv_dim;
  let src = Keep[i];
  Kd[id] = Ks[src * P.kv_dim + c];
  Vd[id] = Vs[src * P.kv_dim + c];
  if (c == 0u) {
    Pd[i] = Ps[src];
  }
}
