// Weight accessor: Q8_0 rows, repacked at upload into 9 u32 per 32-value block:
// word 0 = f16 scale (low half), words 1..8 = the 32 int8 quants (little-endian bytes).
@group(0) @binding(0) var<storage, read> W: array<u32>;

fn w_at(row: u32, k: u32, cols: u32) -> f32 {
  let base = (row * (cols / 32u) + k / 32u) * 9u;
  let d = unpack2x16float(W[base]).x;
  let i = k % 32u;
  let q = extractBits(bitcast<i32>(W[base + 1u + i / 4u]), (i % 4u) * 8u, 8u);
  return d * f32(q);
}
