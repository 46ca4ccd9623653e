// Fused attention for one decode query (T = 1) of one sequence over one layer's cache, in one workgroup:
// per head: logits with causal mask → softmax (probabilities kept in S) → output; then the score output
// Out[out_off + j] = Wt[w_off] * sum_h S[h, j] when want_scores. Replaces attn_scores + softmax + attn_out +
// attn_score_sum (4 dispatches) on the decode path.
// kv_t (the cache's element type, f32 or f16) is declared by kernels.ts.
struct Params {
  n_heads: u32,
  head_dim: u32,
  kv_dim: u32,
  len: u32,
  q_row: u32,
  q_stride: u32,
  group: u32,
  qpos: u32,
  scale: f32,
  out_row: u32,
  w_off: u32,
  out_off: u32,
  want_scores: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> QKV: array<f32>;
@group(0) @binding(2) var<storage, read> K: array<kv_t>;
@group(0) @binding(3) var<storage, read> V: array<kv_t>;
@group(0) @binding(4) var<storage, read> Pos: array<i32>;
@group(0) @binding(5) var<storage, read_write> S: array<f32>;
@group(0) @binding(6) var<storage, read_write> O: array<f32>;
@group(0) @binding(7) var<storage, read> Wt: array<f32>;
@group(0) @binding(8) var<storage, read_write> Out: array<f32>;

var<workgroup> red: array<f32, 64>;

fn reduce_max(li: u32, v: f32) -> f32 {
  red[li] = v;
  workgroupBarrier();
  for (var w = 32u; w > 0u; w >>= 1u) {
    if (li < w) {
      red[li] = max(red[li], red[li + w]);
    }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}

fn reduce_sum(li: u32, v: f32) -> f32 {
  red[li] = v;
  workgroupBarrier();
  for (var w = 32u; w > 0u; w >>= 1u) {
    if (li < w) {
      red[li] += red[li + w];
    }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) li: u32) {
  let L = P.len;
  let hd = P.head_dim;
  let dpr = min(hd, 64u);
  let parts = 64u / dpr;
  for (var h = 0u; h < P.n_heads; h++) {
    let q = P.q_row * P.q_stride + h * hd;
    let kb = (h / P.group) * hd;
    let sb = h * L;
    var m = -3.4e38;
    for (var j = li; j < L; j += 64u) {
      var s = -3.0e38;
      if (Pos[j] <= i32(P.qpos)) {
        var acc = 0.0;
        for (var d = 0u; d < hd; d++) {
          acc += QKV[q + d] * f32(K[j * P.kv_dim + kb + d]);
        }
        s = acc * P.scale;
      }
      S[sb + j] = s;
      m = max(m, s);
    }
    let mx = reduce_max(li, m);
    var sum = 0.0;
    for (var j = li; j < L; j += 64u) {
      let e = exp(S[sb + j] - mx);
      S[sb + j] = e;
      sum += e;
    }
    let inv = 1.0 / reduce_sum(li, sum);
    for (var j = li; j < L; j += 64u) {
      S[sb + j] *= inv;
    }
    storageBarrier();
    workgroupBarrier();
    for (var base = 0u; base < hd; base += dpr) {
      let d = base + li % dpr;
      let part = li / dpr;
      var acc = 0.0;
      if (part < parts && d < hd) {
        for (var j = part; j < L; j += parts) {
          acc += S[sb + j] * f32(V[j * P.kv_dim + kb + d]);
        }
      }
      red[li] = acc;
      workgroupBarrier();
      if (li < dpr && base + li < hd) {
        var t = 0.0;
        for (var p = 0u; p < parts; p++) {
          t += red[li + p * dpr];
        }
        O[P.out_row * P.n_heads * hd + h * hd + base + li] = t;
      }
      workgroupBarrier();
    }
  }
  if (P.want_scores != 0u) {
    storageBarrier();
    let w = Wt[P.w_off];
    for (var j = li; j < L; j += 64u) {
      var s = 0.0;
      for (var h = 0u; h < P.n_heads; h++) {
        s += S[h * L + j];
      }
      Out[P.out_off + j] = w * s;
    }
  }
}
