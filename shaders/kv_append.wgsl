// KV append: copy the k and v parts of T fused qkv rows (already roped) into one layer's cache at rows
// dst_row.., and record their original positions pos0, pos0+1, ...
//
// KV_MODE is prepended by kernels.ts: 0 = f32 values as they are; 1 = f32 values rounded to f16 (round to
// nearest, ties to even, exactly like Math.f16round); 2 = f16 storage, two halves packed per u32 word (element
// 2i in the low half). K/V are bound as u32 words either way; one invocation handles a pair of elements (kv_dim
// is even), so no two invocations write the same word. The rounding is done on the bits (not with f16() or
// pack2x16float, whose rounding mode WGSL leaves to the implementation), so every device stores the same values.
struct Params {
  t: u32,
  kv_dim: u32,
  stride: u32,
  k_off: u32,
  row_in: u32,
  dst_row: u32,
  pos0: u32,
  _pad: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> QKV: array<f32>;
@group(0) @binding(2) var<storage, read_write> K: array<u32>;
@group(0) @binding(3) var<storage, read_write> V: array<u32>;
@group(0) @binding(4) var<storage, read_write> Pos: array<i32>;

// f32 -> IEEE half bits, round to nearest even; beyond the f16 range -> ±inf; NaN stays NaN.
fn f16_bits(x: f32) -> u32 {
  let b = bitcast<u32>(x);
  let s = (b >> 16u) & 0x8000u;
  let a = b & 0x7fffffffu;
  if (a > 0x7f800000u) {
    return s | 0x7e00u | ((a >> 13u) & 0x3ffu);
  }
  if (a >= 0x477ff000u) {
    return s | 0x7c00u; // >= 65520 (and inf) rounds to inf
  }
  if (a >= 0x38800000u) {
    // normal f16 (>= 2^-14): drop 13 mantissa bits with ties to even, rebias the exponent (127 -> 15)
    let r = a + 0xfffu + ((a >> 13u) & 1u);
    return s | ((r - 0x38000000u) >> 13u);
  }
  if (a <= 0x33000000u) {
    return s; // <= 2^-25 (a tie at 2^-25 goes to the even 0)
  }
  // subnormal f16: m = round(|x| · 2^24), |x| = mant · 2^(e - 150)
  let e = a >> 23u;
  let mant = (a & 0x7fffffu) | 0x800000u;
  let shift = 126u - e;
  let q = mant >> shift;
  let rem = mant & ((1u << shift) - 1u);
  let half = 1u << (shift - 1u);
  var m = q;
  if (rem > half || (rem == half && (q & 1u) == 1u)) {
    m += 1u;
  }
  return s | m;
}

// IEEE half bits -> f32 bits (exact).
fn f16_to_f32_bits(h: u32) -> u32 {
  let s = (h & 0x8000u) << 16u;
  let e = (h >> 10u) & 0x1fu;
  let m = h & 0x3ffu;
  if (e == 0x1fu) {
    return s | 0x7f800000u | (m << 13u);
  }
  if (e == 0u) {
    if (m == 0u) {
      return s;
    }
    let p = firstLeadingBit(m); // value = m · 2^-24 = 1.f · 2^(p - 24)
    return s | ((p + 103u) << 23u) | ((m << (23u - p)) & 0x7fffffu);
  }
  return s | ((e + 112u) << 23u) | (m << 13u);
}

fn store_f32(x: f32) -> u32 {
  if (KV_MODE == 1u) {
    return f16_to_f32_bits(f16_bits(x));
  }
  return bitcast<u32>(x);
}

@compute @workgroup_size(64)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) li: u32,
) {
  let id = (wid.x + wid.y * nwg.x) * 64u + li;
  let pairs = P.kv_dim / 2u;
  if (id >= P.t * pairs) {
    return;
  }
  let t = id / pairs;
  let c = (id % pairs) * 2u;
  let src = (P.row_in + t) * P.stride + P.k_off + c;
  let dst = (P.dst_row + t) * P.kv_dim + c;
  if (KV_MODE == 2u) {
    K[dst / 2u] = f16_bits(QKV[src]) | (f16_bits(QKV[src + 1u]) << 16u);
    V[dst / 2u] = f16_bits(QKV[src + P.kv_dim]) | (f16_bits(QKV[src + P.kv_dim + 1u]) << 16u);
  } else {
    K[dst] = store_f32(QKV[src]);
    K[dst + 1u] = store_f32(QKV[src + 1u]);
    V[dst] = store_f32(QKV[src + P.kv_dim]);
    V[dst + 1u] = store_f32(QKV[src + P.kv_dim + 1u]);
  }
  if (c == 0u) {
    Pos[P.dst_row + t] = i32(P.pos0 + t);
  }
}
